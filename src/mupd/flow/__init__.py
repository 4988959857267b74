"""Flow matching: interpolant, loss, condition dropout, guidance and samplers (t = 1 is noise)."""

from .guidance import GuidancePlan, branch_conditions, guided_velocity
from .interpolant import interpolate, sample_time, score_from_velocity
from .loss import drop_conditions, flow_matching_loss
from .samplers import readout, sample, time_grid

__all__ = [
    "interpolate",
    "sample_time",
    "score_from_velocity",
    "flow_matching_loss",
    "drop_conditions",
    "guided_velocity",
    "branch_conditions",
    "GuidancePlan",
    "sample",
    "readout",
    "time_grid",
]
