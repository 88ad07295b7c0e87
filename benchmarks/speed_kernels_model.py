"""Whole-model kernel investigation (scratch script, kept verbatim): SmolLM2-135M with every Linear
replaced by (a) torch._int_mm + per-token activations, (b) fbgemm dynamic per-tensor, each with and
without lm_head; perplexity on 4 eval windows of 256 and alternating latency (3 rounds, 16 decode
tokens), 1 thread. Run: python benchmarks/speed_kernels_model.py"""
import torch, copy, sys, time
torch.set_num_threads(1)
from slimkit.models import load_model
from slimkit.data import build_splits
from slimkit.evaluation import latency, perplexity
lm = load_model('smollm2-135m'); m = lm.model
data = build_splits(lm.tokenizer, seq_len=256, train_tokens=4096, calibration_samples=8, eval_tokens=256*4)

class IntMM(torch.nn.Module):
    def __init__(s, lin):
        super().__init__()
        W = lin.weight.detach()
        s.register_buffer("sw", (W.abs().amax(1).clamp_min(1e-8)/127))
        s.register_buffer("wq", (W/s.sw[:,None]).round().clamp(-127,127).to(torch.int8))
        s.bias = lin.bias
    def forward(s, x):
        shp = x.shape; x = x.reshape(-1, shp[-1])
        sx = torch.linalg.vector_norm(x, float('inf'), dim=-1, keepdim=True).clamp_min_(1e-8).div_(127)
        xq = torch.round(x / sx).to(torch.int8)
        y = torch._int_mm(xq, s.wq.t()).mul(s.sw).mul_(sx)
        if s.bias is not None: y = y + s.bias
        return y.reshape(*shp[:-1], -1)
class Fbg(torch.nn.Module):
    def __init__(s, lin):
        super().__init__()
        W = lin.weight.detach(); sw=(W.abs().amax(1).clamp_min(1e-8)/127)
        s.pw = torch.ops.quantized.linear_prepack(torch.quantize_per_channel(W, sw.double(), torch.zeros(W.shape[0],dtype=torch.long),0,torch.qint8), None)
    def forward(s, x):
        return torch.ops.quantized.linear_dynamic(x, s.pw, False)
def conv(model, cls, lm_head=False):
    model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        for cn, c in list(mod.named_children()):
            full = f"{name}.{cn}" if name else cn
            if isinstance(c, torch.nn.Linear) and (lm_head or full != "lm_head"):
                setattr(mod, cn, cls(c))
    return model
models = {"fp32": m, "intmm": conv(m, IntMM), "intmm+head": conv(m, IntMM, True), "fbgemm": conv(m, Fbg), "fbgemm+head": conv(m, Fbg, True)}
ev = data.eval
for k, v in models.items():
    t=time.time(); print(k, "ppl", round(perplexity(v, ev, batch_size=2),3), round(time.time()-t,1), flush=True)
prompt = data.eval[:1, :128]
r = latency(models, prompt, threads=1, repeats=3, decode_tokens=16)
b = r["fp32"]
for k, v in r.items():
    print(k, "prefill_ms %.1f ratio %.2f  decode %.1f tok/s x%.2f" % (v["prefill_ms"], b["prefill_ms"]/v["prefill_ms"], v["decode_tokens_per_s"], v["decode_tokens_per_s"]/b["decode_tokens_per_s"]))
