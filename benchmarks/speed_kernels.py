"""Kernel investigation for the int8 backend (scratch script, kept verbatim for reproducibility).

Cold-cache micro-benchmark of one SmolLM2 Linear shape: 24 distinct weights are cycled so they come
from DRAM, as in a real forward. Candidates: fp32 F.linear; torch._int_mm with per-token eager
quantization; oneDNN qlinear_pointwise (s8 activations, prepacked); fbgemm quantized.linear_dynamic
(per-tensor, prepacked). Median microseconds per call, 1 thread. Run: python benchmarks/speed_kernels.py
(see benchmarks/speed.md for the numbers it printed here)."""
import torch, time, statistics
torch.set_num_threads(1)
L=24
INF=float('inf')
def quant(x):
    sx = torch.linalg.vector_norm(x, INF, dim=-1, keepdim=True).clamp_min_(1e-8).div_(127)
    return torch.round(x / sx).to(torch.int8), sx
for M in (1,128):
 for (N,K) in [(1536,576),(576,1536)]:
  Ws=[torch.randn(N,K) for _ in range(L)]
  sws=[W.abs().amax(1)/127 for W in Ws]
  Wq=[(W/s[:,None]).round().to(torch.int8) for W,s in zip(Ws,sws)]
  pw=[torch.ops.quantized.linear_prepack(torch._make_per_channel_quantized_tensor(w, s.double(), torch.zeros(N,dtype=torch.long),0), None) for w,s in zip(Wq,sws)]
  pk=[torch.ops.onednn.qlinear_prepack(w, None) for w in Wq]
  zp=torch.zeros(N,dtype=torch.long)
  x=torch.randn(M,K)
  def intmm(i):
    xq,sx=quant(x); return torch._int_mm(xq, Wq[i].t()).mul(sws[i]).mul_(sx)
  def onednn(i):
    xq,sx=quant(x); return torch.ops.onednn.qlinear_pointwise(xq,1.0,0,pk[i],sws[i],zp,None,1.0,0,torch.float32,"none",[],"").mul_(sx)
  fs={"fp32":lambda i: torch.nn.functional.linear(x,Ws[i]), "intmm":intmm, "onednn":onednn,
      "fbgemm_dyn":lambda i: torch.ops.quantized.linear_dynamic(x,pw[i],False)}
  ref=fs["fp32"](0)
  print(flush=True,*[{k:round(((f(0)-ref).norm()/ref.norm()).item(),4) for k,f in fs.items()}])
  ts={k:[] for k in fs}
  for r in range(6 if M==1 else 2):
    for k,f in fs.items():
        t=time.perf_counter()
        for i in range(L): f(i)
        ts[k].append((time.perf_counter()-t)/L*1e6)
  print(M,(N,K), {k:round(statistics.median(v),1) for k,v in ts.items()}, flush=True)
