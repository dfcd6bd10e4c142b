"""PyTorch bf16 eager baseline for kernels/device/run.sh: SANA's Linear-DiT forward written directly in torch (the
device image has torch, not diffusers), random weights, timed at the same shapes as the CUDA backend.

usage: torch_reference.py --config CONFIG.json --sizes 512,1024 --batch 2 --caption 300 --repeats 5 --out OUT.json
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["num_attention_heads"] * c["attention_head_dim"]
        dx = c["num_cross_attention_heads"] * c["cross_attention_head_dim"]
        hidden = int(c.get("mlp_ratio", 2.5) * d)
        self.heads, self.head_dim = c["num_attention_heads"], c["attention_head_dim"]
        self.cross_heads, self.cross_dim = c["num_cross_attention_heads"], c["cross_attention_head_dim"]
        self.eps = c.get("norm_eps", 1e-6)
        self.table = nn.Parameter(torch.randn(6, d) / d**0.5)
        self.qkv = nn.Linear(d, 3 * d, bias=c.get("attention_bias", False))
        self.attn_out = nn.Linear(d, d)
        self.cross_q = nn.Linear(d, dx)
        self.cross_kv = nn.Linear(d, 2 * dx)
        self.cross_out = nn.Linear(dx, d)
        self.inverted = nn.Linear(d, 2 * hidden)
        self.depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.point = nn.Linear(hidden, d, bias=False)

    def forward(self, x, y, mask_bias, t6, h, w):
        b, n, d = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.table[None] + t6.view(b, 6, d)).chunk(6, dim=1)
        # linear attention: relu(q) (relu(k)^T [v 1]) / ones column, in fp32 as the released code does
        hx = F.layer_norm(x, (d,), eps=self.eps) * (1 + scale1) + shift1
        q, k, v = self.qkv(hx).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).float()
        q, k = F.relu(q), F.relu(k)
        v1 = F.pad(v, (0, 1), value=1.0)
        kv = torch.matmul(k.transpose(-1, -2), v1)
        o = torch.matmul(q, kv)
        o = (o[..., :-1] / (o[..., -1:] + 1e-15)).to(x.dtype)
        x = x + gate1 * self.attn_out(o.transpose(1, 2).reshape(b, n, d))
        # cross-attention over the caption
        cq = self.cross_q(x).view(b, n, self.cross_heads, self.cross_dim).transpose(1, 2)
        ck, cv = self.cross_kv(y).view(b, -1, 2, self.cross_heads, self.cross_dim).permute(2, 0, 3, 1, 4)
        co = F.scaled_dot_product_attention(cq, ck, cv, attn_mask=mask_bias)
        x = x + self.cross_out(co.transpose(1, 2).reshape(b, n, -1))
        # Mix-FFN: 1x1, SiLU, 3x3 depthwise, GLU, 1x1
        hx = F.layer_norm(x, (d,), eps=self.eps) * (1 + scale2) + shift2
        u = F.silu(self.inverted(hx)).transpose(1, 2).reshape(b, -1, h, w)
        u = self.depth(u).flatten(2).transpose(1, 2)
        value, gate = u.chunk(2, dim=-1)
        return x + gate2 * self.point(value * F.silu(gate))


class LinearDiT(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["num_attention_heads"] * c["attention_head_dim"]
        p = c.get("patch_size", 1)
        self.p, self.out_channels = p, c.get("out_channels") or c["in_channels"]
        self.patch = nn.Conv2d(c["in_channels"], d, p, stride=p)
        self.t1, self.t2, self.t6 = nn.Linear(256, d), nn.Linear(d, d), nn.Linear(d, 6 * d)
        self.c1, self.c2 = nn.Linear(c["caption_channels"], d), nn.Linear(d, d)
        self.caption_norm = nn.Parameter(torch.ones(d))
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["num_layers"]))
        self.final_table = nn.Parameter(torch.randn(2, d) / d**0.5)
        self.proj_out = nn.Linear(d, p * p * self.out_channels)

    def forward(self, latents, caption, mask, t):
        b, _, hh, ww = latents.shape
        h, w = hh // self.p, ww // self.p
        x = self.patch(latents).flatten(2).transpose(1, 2)
        freqs = torch.exp(-math.log(10000) * torch.arange(128, device=t.device, dtype=torch.float32) / 128)
        args = t.float()[:, None] * freqs[None]
        temb = self.t2(F.silu(self.t1(torch.cat([args.cos(), args.sin()], -1).to(x.dtype))))
        t6 = self.t6(F.silu(temb))
        y = self.c2(F.gelu(self.c1(caption), approximate="tanh"))
        y = y * torch.rsqrt(y.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(y.dtype) * self.caption_norm
        mask_bias = ((1 - mask.to(x.dtype)) * -10000.0)[:, None, None, :]
        for blk in self.blocks:
            x = blk(x, y, mask_bias, t6, h, w)
        shift, scale = (self.final_table[None] + temb[:, None]).chunk(2, dim=1)
        x = F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale) + shift
        out = self.proj_out(x).view(b, h, w, self.p, self.p, self.out_channels)
        return out.permute(0, 5, 1, 3, 2, 4).reshape(b, self.out_channels, hh, ww)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--sizes", default="512,1024,2048,4096")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--caption", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    c = json.load(open(a.config))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16
    torch.manual_seed(0)
    model = LinearDiT(c).to(dev, dtype).eval()
    rows = []
    with torch.inference_mode():
        for px in [int(s) for s in a.sizes.split(",")]:
            side = px // 32
            latents = torch.randn(a.batch, c["in_channels"], side, side, device=dev, dtype=dtype)
            caption = torch.randn(a.batch, a.caption, c["caption_channels"], device=dev, dtype=dtype)
            mask = torch.ones(a.batch, a.caption, device=dev)
            t = torch.full((a.batch,), 500.0, device=dev)
            model(latents, caption, mask, t)  # warm-up
            times = []
            for _ in range(a.repeats):
                if dev == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(latents, caption, mask, t)
                if dev == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - start) * 1000)
            times.sort()
            rows.append({"engine": "torch-bf16-eager", "px": px, "batch": a.batch, "tokens": side * side, "medianMs": times[len(times) // 2], "runs": times, "device": dev})
            print(f"  torch-bf16-eager {px:5d} px  {times[len(times) // 2]:10.2f} ms", flush=True)
    json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "timing": rows}, open(a.out, "w"), indent=2)


if __name__ == "__main__":
    main()
