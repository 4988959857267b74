"""mupd inside other ecosystems' containers (``lazyslide``: WSIData from LazySlide/wsidata)."""
