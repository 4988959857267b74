"""The page's HTML and CSS: hand-written, no framework, no CDN, so it works offline."""

CSS = """
[hidden]{display:none !important}
body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#4b2a5c;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:20px;margin:0}#status,#licence-detail{font-size:13px}
#licence{font-size:13px;padding:2px 8px;border-radius:4px;background:#2e7d32}
#licence.noncommercial{background:#c62828;font-weight:bold}#licence.check{background:#b26a00}
nav{padding:8px 16px;display:flex;gap:4px}nav button{padding:6px 14px;border:1px solid #999;background:#eee;cursor:pointer}
nav button.active{background:#fff;border-bottom-color:#fff;font-weight:bold}
main{padding:0 16px 24px}section{background:#fff;border:1px solid #ccc;padding:12px}
fieldset{border:1px solid #ddd;margin:6px 0;display:inline-block;vertical-align:top;min-width:260px}
textarea{width:100%;min-height:48px}label{display:block;margin:3px 0}
.slider output{display:inline-block;width:3em;text-align:right}
#queue{padding:4px 16px;font-size:13px;color:#555}
#error{margin:6px 16px;padding:8px;background:#fdecea;border:1px solid #c62828;color:#8b0000;white-space:pre-wrap}
#notes{margin:6px 16px;font-size:13px;color:#555}
.grid{display:flex;flex-wrap:wrap;gap:12px;margin-top:10px}
.card{border:1px solid #ddd;padding:6px;background:#fff;max-width:300px}
.card img{image-rendering:pixelated;width:256px;height:auto;display:block;background:#eee}
.card pre{font-size:11px;white-space:pre-wrap;word-break:break-all;margin:4px 0;max-height:160px;overflow:auto}
.pair{display:flex;gap:12px;flex-wrap:wrap;margin-top:10px}.pair figure{margin:0}
.pair img{width:256px;height:256px;object-fit:contain;background:#eee;image-rendering:pixelated;display:block}
.blend-box{position:relative;width:256px;height:256px}.blend-box img{position:absolute;left:0;top:0}
.columns{display:flex;gap:12px;flex-wrap:wrap}button.go{font-size:16px;padding:6px 18px;margin:8px 0}
"""

SAMPLING = """
<label>Steps <input name="steps" type="number" min="1" value="20" style="width:5em"></label>
<label>Sampler <select name="sampler"><option>heun</option><option>euler</option><option>euler_maruyama</option></select></label>
<label>Seed <input name="seed" type="number" min="0" value="0" style="width:7em"></label>
"""

PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mupd</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>
<body>
<header><h1>mupd</h1><span id="status">connecting…</span><span id="licence"></span><span id="licence-detail"></span></header>
<nav><button data-tab="generate" class="active">Generate</button>
<button data-tab="image">Stain / translate / vary</button><button data-tab="compare">Compare</button></nav>
<div id="queue">queue: empty</div>
<div id="error" role="alert" hidden></div>
<div id="notes"></div>
<main>
<section id="tab-generate">
<form id="generate-form">
<fieldset id="f-text"><legend>Text</legend>
<textarea name="text" placeholder="e.g. invasive ductal carcinoma, high grade"></textarea>
<label id="label-pick">or a class label <select name="label"><option value="">(none)</option></select></label></fieldset>
<fieldset id="f-rna"><legend>RNA</legend>
<label>Expression file (.h5ad, gene table) <input name="rna" type="file" accept=".h5ad,.tsv,.csv,.txt,.gz"></label>
<label>Row <select name="rna_row"><option value="">(the only row)</option></select></label>
<label>or a few gene values <textarea name="genes" placeholder="ERBB2=8.1, ESR1=2"></textarea></label></fieldset>
<fieldset id="f-image"><legend>Reference image</legend><input name="ref" type="file" accept="image/*"></fieldset>
<fieldset><legend>Guidance and λ per modality</legend><div id="sliders"></div></fieldset>
<fieldset><legend>Sampling</legend>
<label>Images <input name="n" type="number" min="1" value="4" style="width:4em"></label>{SAMPLING}</fieldset>
<div><button class="go" type="submit" id="generate-button">Generate</button> <a id="generate-zip" hidden>download all (zip)</a></div>
</form>
<div id="generate-results" class="grid"></div>
</section>
<section id="tab-image" hidden>
<form id="image-form">
<fieldset><legend>Region</legend><input name="image" type="file" accept="image/*">
<label>Method <select name="method"></select></label>
<label id="strength-pick">Strength (SDEdit) <input name="strength" type="number" min="0" max="1" step="0.05" value="0.6" style="width:5em"></label>
<label id="image-text">Text <input name="text"></label></fieldset>
<fieldset><legend>Sampling</legend>{SAMPLING}</fieldset>
<div><button class="go" type="submit" id="image-button">Run</button>
<progress id="image-progress" max="1" value="0"></progress> <span id="image-progress-text"></span></div>
</form>
<div class="pair">
<figure><img id="source-view" alt="source"><figcaption>source</figcaption></figure>
<figure><img id="result-view" alt="result"><figcaption>result <a id="result-download" download hidden>download PNG</a></figcaption></figure>
<figure><div class="blend-box"><img id="blend-source" alt=""><img id="blend-result" alt=""></div>
<figcaption>blend <input id="blend" type="range" min="0" max="100" value="50"></figcaption></figure>
</div>
<pre id="image-params"></pre>
</section>
<section id="tab-compare" hidden>
<p>Two parameter sets on the conditions of the Generate tab, with the same seed.</p>
<form id="compare-form"><label>Seed <input name="seed" type="number" min="0" value="0" style="width:7em"></label>
<div class="columns">
<fieldset data-side="a"><legend>A</legend><div class="sliders"></div>
<label>Steps <input name="steps" type="number" min="1" value="20" style="width:5em"></label>
<label>Sampler <select name="sampler"><option>heun</option><option>euler</option><option>euler_maruyama</option></select></label></fieldset>
<fieldset data-side="b"><legend>B</legend><div class="sliders"></div>
<label>Steps <input name="steps" type="number" min="1" value="20" style="width:5em"></label>
<label>Sampler <select name="sampler"><option>heun</option><option>euler</option><option>euler_maruyama</option></select></label></fieldset>
</div><button class="go" type="submit" id="compare-button">Compare</button></form>
<div class="columns"><div id="compare-a" class="grid"></div><div id="compare-b" class="grid"></div></div>
</section>
</main>
<script src="/app.js"></script>
</body></html>
"""
