"""``/docs``: a small self-contained page over the combined OpenAPI (no CDN, no external assets)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse

__all__ = ["docs_page"]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kgrid-py activator</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:980px;padding:1rem;color:#222}
h1{font-size:1.4rem}details{border:1px solid #ccd;border-radius:6px;margin:.4rem 0;padding:.3rem .6rem}
summary{cursor:pointer}code,textarea,pre{font:12px/1.4 ui-monospace,monospace}
.m{display:inline-block;min-width:3.5em;font-weight:600}.get{color:#07a}.post{color:#a50}
textarea{width:100%;min-height:8em}pre{background:#f6f6f8;padding:.5rem;overflow:auto;max-height:24em}
button{margin:.3rem 0}.d{color:#555}
</style></head><body>
<h1>kgrid-py activator</h1>
<p class="d">Every route and every served knowledge object, from <a href="/openapi.json">/openapi.json</a>.
POST bodies are one JSON object of inputs, or an array of them (a batch).</p>
<div id="ops">Loading…</div>
<script>
"use strict";
function example(s, root){
  if(!s) return null;
  if(s.$ref){const n=s.$ref.split("/").pop(); return example(root.components.schemas[n], root);}
  if(s.oneOf) return example(s.oneOf[0], root);
  if(s.default!==undefined) return s.default;
  if(s.enum) return s.enum[0];
  if(s.type==="object"){const o={};for(const k of (s.required||[])){o[k]=example((s.properties||{})[k],root);}return o;}
  if(s.type==="array") return [];
  if(s.type==="boolean") return false;
  if(s.type==="integer"||s.type==="number"){
    if(s.minimum!==undefined) return s.minimum;
    const lo=s.exclusiveMinimum, hi=s.maximum??s.exclusiveMaximum;
    if(lo!==undefined&&hi!==undefined) return s.type==="integer"?Math.round((lo+hi)/2):(lo+hi)/2;
    if(lo!==undefined) return lo+1; return 1;}
  return "";
}
function el(tag, attrs, ...kids){const e=document.createElement(tag);Object.assign(e,attrs||{});
  for(const k of kids) e.append(k);return e;}
async function send(method, path, body, out){
  out.textContent="…";
  const init={method,headers:{"Accept":"application/json"}};
  if(body!==null){init.body=body;init.headers["Content-Type"]="application/json";}
  const r=await fetch(path,init); const t=await r.text(); let shown=t;
  try{shown=JSON.stringify(JSON.parse(t),null,2);}catch(e){}
  out.textContent=r.status+" "+r.statusText+"\\n"+shown;
}
fetch("/openapi.json").then(r=>r.json()).then(spec=>{
  const ops=document.getElementById("ops"); ops.textContent="";
  for(const [path,item] of Object.entries(spec.paths)){
    for(const [method,op] of Object.entries(item)){
      const out=el("pre"); const d=el("details");
      d.append(el("summary",{},el("span",{className:"m "+method,textContent:method.toUpperCase()}),
        el("code",{textContent:path})," ",el("span",{className:"d",textContent:op.summary||""})));
      const params=(op.parameters||[]).filter(p=>p.in==="path");
      const inputs=params.map(p=>el("input",{placeholder:p.name,size:14}));
      if(inputs.length) d.append(...inputs.flatMap(i=>[i," "]));
      let area=null;
      if(op.requestBody){
        const s=op.requestBody.content["application/json"].schema;
        area=el("textarea",{value:JSON.stringify(example(s,spec),null,2)});
        d.append(el("p",{className:"d",textContent:op.description||""}),area);
      }
      const button=el("button",{textContent:"Send"});
      button.onclick=()=>{let p=path;
        params.forEach((q,i)=>{p=p.replace("{"+q.name+"}",encodeURIComponent(inputs[i].value));});
        send(method.toUpperCase(),p,area?area.value:null,out);};
      d.append(el("div",{},button),out); ops.append(d);
    }
  }
}).catch(e=>{document.getElementById("ops").textContent="Could not load /openapi.json: "+e;});
</script></body></html>
"""


async def docs_page(request: Request) -> HTMLResponse:
    return HTMLResponse(_PAGE)
