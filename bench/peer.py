#!/usr/bin/env python3
"""PyTorch peer of effect-deq's benchmarks: the same DEQ cells, timed on CPU with torch.

Workloads (the ones bench/fixedPoint.ts and bench/suite.ts time on tfjs):
  conv cell: z' = relu(groupnorm(conv3x3(z) + u)), batch 64, 32 channels, 28x28, 8 groups, no affine
  fc cell:   z' = tanh(z W + u), batch 64, hidden 256
(sizes and iteration counts can be changed with flags, to match a quick run of the TypeScript side)
For each cell: one f evaluation; a solve of K iterations (tol 0) with Picard and with Anderson (m = 5); forward
(Anderson) + implicit backward (20 adjoint Picard iterations through autograd VJPs, then the parameter VJP);
forward + phantom backward (k = 5, tau = 0.5). Median wall time in ms after a warm-up, per thread count.

Usage: GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296 \
         /usr/bin/python3 bench/peer.py [--threads 1,2] [--quick]
Prints one JSON object on stdout.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def median_ms(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def conv_cell(batch, channels, size):
    g = torch.Generator().manual_seed(1)
    weight = (torch.randn(channels, channels, 3, 3, generator=g) * (2.0 / (9 * channels)) ** 0.5).requires_grad_()
    u = torch.randn(batch, channels, size, size, generator=g)

    def f(z, w=weight, inj=u):
        return F.relu(F.group_norm(F.conv2d(z, w, padding=1) + inj, 8, eps=1e-5))

    return "conv (B %d, %d ch, %dx%d)" % (batch, channels, size, size), f, torch.zeros(batch, channels, size, size), weight


def fc_cell(batch, hidden):
    g = torch.Generator().manual_seed(3)
    weight = (torch.randn(hidden, hidden, generator=g) * (0.9 / (2 * hidden ** 0.5))).requires_grad_()
    u = torch.randn(batch, hidden, generator=g)

    def f(z, w=weight, inj=u):
        return torch.tanh(z @ w + inj)

    return "fc (B %d, hidden %d)" % (batch, hidden), f, torch.zeros(batch, hidden), weight


def picard(f, z0, iters):
    z = z0
    for _ in range(iters):
        z = f(z)
    return z


def anderson(f, z0, iters, m=5, lam=1e-4):
    """Anderson acceleration (TorchDEQ style, beta = 1) on flattened states; iters + 1 evaluations of f.

    The Gram matrix is updated one row per step (torch 1.13's bmm of [B, m, N] x [B, N, m] is slow for small m).
    """
    b = z0.shape[0]
    shape = z0.shape
    n = z0[0].numel()
    X = torch.zeros(b, m, n)
    Fx = torch.zeros(b, m, n)
    G = torch.zeros(b, m, n)
    gram = torch.zeros(b, m, m)

    def put(slot, x, fx):
        X[:, slot] = x
        Fx[:, slot] = fx
        torch.sub(fx, x, out=G[:, slot])
        row = (G * G[:, slot, None]).sum(-1)
        gram[:, slot, :] = row
        gram[:, :, slot] = row

    x0 = z0.reshape(b, -1)
    f0 = f(z0).reshape(b, -1)
    put(0, x0, f0)
    put(1, f0, f(f0.reshape(shape)).reshape(b, -1))
    H = torch.zeros(b, m + 1, m + 1)
    H[:, 0, 1:] = H[:, 1:, 0] = 1
    y = torch.zeros(b, m + 1, 1)
    y[:, 0] = 1
    last = 1
    for k in range(2, iters + 1):
        mk = min(k, m)
        gk = gram[:, :mk, :mk]
        H[:, 1:mk + 1, 1:mk + 1] = gk + lam * gk.abs().amax(dim=(1, 2), keepdim=True) * torch.eye(mk)[None]
        alpha = torch.linalg.solve(H[:, :mk + 1, :mk + 1], y[:, :mk + 1])[:, 1:mk + 1, 0]
        z = (alpha[:, :, None] * Fx[:, :mk]).sum(1)
        last = k % m
        put(last, z, f(z.reshape(shape)).reshape(b, -1))
    return Fx[:, last].reshape(shape).clone()


def implicit_step(f, z0, weight, iters, adjoint_iters=20):
    with torch.no_grad():
        z_star = anderson(f, z0, iters)
    z_star = z_star.requires_grad_()
    fz = f(z_star)
    v = torch.full_like(fz, 1.0 / fz.numel())  # d mean / d z
    g = v
    for _ in range(adjoint_iters):
        (jt,) = torch.autograd.grad(fz, z_star, g, retain_graph=True)
        g = jt + v
    (dw,) = torch.autograd.grad(fz, weight, g)
    return dw


def phantom_step(f, z0, weight, iters, k=5, tau=0.5):
    with torch.no_grad():
        z_star = anderson(f, z0, iters)
    z = z_star
    for _ in range(k):
        z = (1 - tau) * z + tau * f(z)
    (dw,) = torch.autograd.grad(z.mean(), weight)
    return dw


def measure(name, f, z0, weight, iters, runs):
    row = {"cell": name, "iterations": iters}
    with torch.no_grad():
        row["fMs"] = median_ms(lambda: f(z0), 2, runs * 3)
        row["picardMs"] = median_ms(lambda: picard(f, z0, iters), 1, runs)
        row["andersonMs"] = median_ms(lambda: anderson(f, z0, iters), 1, runs)
    row["implicitMs"] = median_ms(lambda: implicit_step(f, z0, weight, iters), 1, max(1, runs // 2))
    row["phantomMs"] = median_ms(lambda: phantom_step(f, z0, weight, iters), 1, max(1, runs // 2))
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--conv-iterations", type=int, default=20)
    parser.add_argument("--fc-iterations", type=int, default=30)
    parser.add_argument("--skip-conv", action="store_true")
    args = parser.parse_args()
    runs = 3 if args.quick else 7
    result = {"torch": torch.__version__, "rows": []}
    for threads in [int(t) for t in args.threads.split(",") if t]:
        torch.set_num_threads(threads)
        cells = [] if args.skip_conv else [conv_cell(args.batch, args.channels, args.size)]
        cells.append(fc_cell(args.batch, args.hidden))
        iters = {"conv": args.conv_iterations, "fc": args.fc_iterations}
        for name, f, z0, weight in cells:
            row = measure(name, f, z0, weight, iters[name.split(" ")[0]], runs)
            row["threads"] = threads
            result["rows"].append(row)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
