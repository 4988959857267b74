"""The page's script: plain JavaScript (no framework, no CDN), served as /app.js."""

SCRIPT = r"""
'use strict';
const $ = (s, root) => (root || document).querySelector(s);
let STATUS = null;

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = {error: 'the server answered ' + response.status}; }
  if (!response.ok) throw new Error(body.error || body.detail || ('the server answered ' + response.status));
  return body;
}
function showError(message) { const box = $('#error'); box.textContent = message; box.hidden = false; }
function clearError() { const box = $('#error'); box.textContent = ''; box.hidden = true; $('#notes').textContent = ''; }
function showNotes(notes) { $('#notes').textContent = (notes || []).join('\n'); }

function slider(name, label, min, max, step, value) {
  return `<label class="slider">${label} <input type="range" name="${name}" min="${min}" max="${max}" step="${step}"` +
    ` value="${value}" oninput="this.nextElementSibling.value=this.value"><output>${value}</output></label>`;
}
function sliders(prefix) {
  return Object.entries(STATUS.streams).filter(([m, ok]) => ok).map(([m]) =>
    slider(prefix + 'guidance_' + m, `guidance ${m}`, 0, 10, 0.5, 1) +
    slider(prefix + 'scale_' + m, `λ ${m}`, 0, 2, 0.1, 1)).join('');
}

function licenceText(s) {
  const parts = Object.entries(s.licence.encoders).map(([m, e]) => `${m}: ${e.name} (${e.licence}; commercial ${e.commercial})`);
  const flag = s.licence.commercial === 'no' ? 'NON-COMMERCIAL USE ONLY' :
    s.licence.commercial === 'check' ? 'commercial use: check the licences' : 'commercial use allowed';
  return {flag, detail: `model licence: ${s.licence.model}; encoders: ${parts.join(', ') || 'none'}`};
}

async function loadStatus() {
  STATUS = await api('/api/status');
  const s = STATUS;
  $('#status').textContent = `model ${s.model} (${s.task}, ${s.image_size} px, streams ${s.modalities.join(', ')})` +
    ` · device ${s.device} · mupd ${s.mupd_version}`;
  const lic = licenceText(s), badge = $('#licence');
  badge.textContent = lic.flag; $('#licence-detail').textContent = lic.detail;
  badge.className = s.licence.commercial === 'no' ? 'noncommercial' : s.licence.commercial === 'check' ? 'check' : '';
  for (const m of ['text', 'rna', 'image']) $('#f-' + m).hidden = !s.streams[m];
  const labels = Object.entries(s.labels);
  $('#label-pick').hidden = labels.length === 0;
  for (const [key, caption] of labels) $('select[name=label]').add(new Option(`${key}: ${caption}`, key));
  $('#sliders').innerHTML = sliders('');
  for (const side of ['a', 'b']) $(`fieldset[data-side=${side}] .sliders`).innerHTML = sliders('');
  for (const method of s.methods) $('select[name=method]').add(new Option(method.replace(':', ' · '), method));
  $('#image-text').hidden = !s.streams.text;
  const strength = () => { $('#strength-pick').hidden = !$('select[name=method]').value.endsWith('sdedit'); };
  $('select[name=method]').addEventListener('change', strength); strength();
  $('input[name=n]').max = s.limits.max_n;
  if (s.task !== 'generate') { $('#generate-button').disabled = true; $('#compare-button').disabled = true;
    $('#generate-results').textContent = `this is a ${s.task} model: use the Stain / translate tab`; }
  showQueue(s.queue);
}

function showQueue(q) {
  const running = q.running.map(j => `${j.id} ${j.kind}` + (j.total ? ` (${j.done}/${j.total} tiles)` : ''));
  $('#queue').textContent = 'queue: ' + (running.length ? 'running ' + running.join(', ') : 'idle') +
    (q.queued.length ? ` · ${q.queued.length} waiting (${q.queued.map(j => j.id).join(', ')})` : '');
}
async function pollQueue() {
  try { showQueue((await api('/api/status')).queue); } catch (e) { $('#queue').textContent = 'server unreachable'; }
  setTimeout(pollQueue, 1000);
}

async function waitJob(id, onProgress) {
  for (;;) {
    const job = await api('/api/jobs/' + id);
    if (onProgress) onProgress(job);
    if (job.state === 'done') return job;
    if (job.state === 'error') throw new Error(job.error);
    await new Promise(r => setTimeout(r, 250));
  }
}

function paramsText(params) {
  return Object.entries(params).filter(([k]) => k !== 'mupd:model')
    .map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join('\n');
}
function card(image, index) {
  const div = document.createElement('div');
  div.className = 'card';
  div.innerHTML = `<img alt="result ${index}"><pre class="params"></pre><a download>download PNG</a>`;
  $('img', div).src = image.url; $('img', div).dataset.width = image.width; $('img', div).dataset.height = image.height;
  $('pre', div).textContent = paramsText(image.params);
  $('a', div).href = image.url; $('a', div).download = image.url.split('/').slice(-2).join('-');
  return div;
}

function generateData(form, overrides) {
  const data = new FormData(form);
  if (!$('input[name=rna]', form).files.length) data.delete('rna');
  if (!$('input[name=ref]', form).files.length) data.delete('ref');
  for (const m of ['text', 'rna', 'image']) if (!STATUS.streams[m]) { data.delete('guidance_' + m); data.delete('scale_' + m); }
  for (const [k, v] of Object.entries(overrides || {})) data.set(k, v);
  return data;
}
async function submitJob(url, data, button) {
  clearError();
  button.disabled = true;
  try { return (await api(url, {method: 'POST', body: data})).job; }
  finally { button.disabled = false; }
}

async function onGenerate(event) {
  event.preventDefault();
  const results = $('#generate-results');
  try {
    const id = await submitJob('/api/generate', generateData(event.target), $('#generate-button'));
    results.innerHTML = `<p class="waiting">job ${id} queued…</p>`;
    const job = await waitJob(id, j => { if (j.state !== 'done') $('.waiting', results).textContent =
      j.state === 'queued' ? `job ${id}: waiting, position ${j.position}` : `job ${id}: running…`; });
    results.innerHTML = '';
    job.images.forEach((im, i) => results.appendChild(card(im, i)));
    showNotes(job.notes);
    const zip = $('#generate-zip'); zip.href = `/api/zip/${id}`; zip.hidden = false;
  } catch (e) { results.innerHTML = ''; showError(e.message); }
}

async function onRnaFile(event) {
  const select = $('select[name=rna_row]');
  select.innerHTML = '<option value="">(the only row)</option>';
  if (!event.target.files.length) return;
  clearError();
  const data = new FormData(); data.append('rna', event.target.files[0]);
  try {
    const rows = (await api('/api/rna/rows', {method: 'POST', body: data})).rows;
    if (rows.length) select.innerHTML = '';
    for (const r of rows) select.add(new Option(r, r));
  } catch (e) { showError(e.message); }
}

function onSource(event) {
  const file = event.target.files[0];
  if (!file) return;
  const url = URL.createObjectURL(file);
  $('#source-view').src = url; $('#blend-source').src = url;
}
async function onImage(event) {
  event.preventDefault();
  const form = event.target, progress = $('#image-progress'), text = $('#image-progress-text');
  $('#result-view').removeAttribute('src'); $('#blend-result').removeAttribute('src');
  $('#result-download').hidden = true; $('#image-params').textContent = '';
  const data = new FormData(form);
  if (!$('input[name=image]', form).files.length) data.delete('image');
  try {
    const id = await submitJob('/api/image', data, $('#image-button'));
    const job = await waitJob(id, j => {
      progress.max = Math.max(1, j.total); progress.value = j.done;
      text.textContent = j.state === 'queued' ? `waiting, position ${j.position}` :
        j.total ? `${j.done}/${j.total} tiles` : j.state;
    });
    const image = job.images[0];
    $('#result-view').src = image.url; $('#blend-result').src = image.url;
    $('#result-view').dataset.width = image.width; $('#result-view').dataset.height = image.height;
    $('#result-download').href = image.url; $('#result-download').hidden = false;
    $('#image-params').textContent = paramsText(image.params);
    text.textContent = `done in ${job.seconds} s` + (job.total ? ` (${job.total} tiles)` : '');
    showNotes(job.notes);
  } catch (e) { text.textContent = ''; showError(e.message); }
}

async function onCompare(event) {
  event.preventDefault();
  const seed = $('input[name=seed]', event.target).value;
  const form = $('#generate-form');
  try {
    const ids = [];
    for (const side of ['a', 'b']) {
      const box = $(`fieldset[data-side=${side}]`), overrides = {seed, n: 1};
      for (const input of box.querySelectorAll('input, select')) overrides[input.name] = input.value;
      const data = generateData(form, overrides);
      ids.push(await submitJob('/api/generate', data, $('#compare-button')));
    }
    for (const [i, side] of ['a', 'b'].entries()) {
      const target = $('#compare-' + side); target.innerHTML = `<p>job ${ids[i]}…</p>`;
      const job = await waitJob(ids[i]);
      target.innerHTML = ''; target.appendChild(card(job.images[0], 0));
    }
  } catch (e) { showError(e.message); }
}

function showTab(name) {
  for (const b of document.querySelectorAll('nav button')) b.classList.toggle('active', b.dataset.tab === name);
  for (const s of document.querySelectorAll('main section')) s.hidden = s.id !== 'tab-' + name;
}

document.addEventListener('DOMContentLoaded', async () => {
  for (const b of document.querySelectorAll('nav button')) b.addEventListener('click', () => showTab(b.dataset.tab));
  $('#generate-form').addEventListener('submit', onGenerate);
  $('#image-form').addEventListener('submit', onImage);
  $('#compare-form').addEventListener('submit', onCompare);
  $('input[name=rna]').addEventListener('change', onRnaFile);
  $('input[name=image]').addEventListener('change', onSource);
  $('#blend').addEventListener('input', e => { $('#blend-result').style.opacity = e.target.value / 100; });
  $('#blend-result').style.opacity = 0.5;
  try { await loadStatus(); } catch (e) { showError('could not reach the server: ' + e.message); }
  pollQueue();
});
"""
