#!/usr/bin/env python3
"""PyTorch peer of effect-deq's benchmarks: the project's own DEQ models, rebuilt in torch from exported weights.

The TypeScript side (bench/peer.ts) writes a model file (config, weights in the project's layout, a batch x, y and
the step settings) and drives this script over stdin/stdout, one JSON object per line, so rounds of ours and of
the peer can alternate and machine noise hits both.

Models (the same functions as src/internal/models/fc.ts and block.ts / conv.ts):
  fc:   u = flatten(x) U + b;  f(z) = relu(layernorm(z W + u) * gamma + beta);  logits = z Wh + bh
  conv: u = stem(x) = GN(conv3x3(relu(GN(conv3x3 stride s(x))))), tfjs 'same' padding (extra pad bottom/right);
        f(z) = GN3(relu(GN2(conv2(relu(GN1(conv1(z)))) + u) + z)), conv1/conv2 weight-normed per output channel
        (w = g v / ||v||, computed once per forward call, as the project's per-call context does);
        logits = mean_hw(z) Wh + bh. GroupNorm: consecutive channel groups, biased variance, eps 1e-5.
Workloads (the same as bench/workloads.ts):
  f          one application of f (u and the filters precomputed)
  solve      N Picard steps from z0 = 0 (tol 0), no tape
  implicit   N Picard steps, then z1 = f(z*) on the tape, loss = CE(head(z1)), the adjoint g = v + J^T g by A
             Picard iterations of autograd VJPs, then g through z1 into every parameter (inject included)
  attack     one PGD step: z_N off the tape, tail f then k damped steps (lambda), CE, grad w.r.t. x, sign step,
             projection on the eps ball and [0, 1]
  train      PGD-AT with random intermediate states: `pgdSteps` attack steps, then the CE at state n (n from the
             file's list; one call runs one step per listed n) through the same tail, all parameter gradients,
             torch.optim.Adam
Ops on stdin: {"op": "load", "key", "file"} | {"op": "time", "key", "workload", "threads", "warmup", "runs",
  "reps"} -> {"ms": [...]} (per call, averaged over reps) | {"op": "check", "key"} -> the values of f, the attack
  gradient and the parameter gradients in the project's layout | {"op": "quit"}.

Usage (bench/peer.ts does this):
  GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296 \
    /usr/bin/python3 bench/peer.py --serve
"""
import argparse
import json
import platform
import sys
import time

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------------------------
# layouts: the project stores conv filters as [kh, kw, in, out] (tfjs), torch as [out, in, kh, kw]
# ---------------------------------------------------------------------------------------------------------------

def to_torch(name, shape, values):
    t = torch.tensor(values, dtype=torch.float32).reshape(shape)
    if len(shape) == 4:
        t = t.permute(3, 2, 0, 1).contiguous()
    return t


def to_project(t):
    if t.dim() == 4:
        t = t.permute(2, 3, 1, 0)
    return t.contiguous().reshape(-1).tolist()


def same_pad(size, stride, k=3):
    """tfjs 'same' padding: total max((out - 1) s + k - in, 0), the odd pixel after (bottom / right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def conv_same(x, w, stride=1):
    if stride == 1:
        return F.conv2d(x, w, padding=w.shape[-1] // 2)
    top, bottom = same_pad(x.shape[2], stride, w.shape[2])
    left, right = same_pad(x.shape[3], stride, w.shape[3])
    return F.conv2d(F.pad(x, (left, right, top, bottom)), w, stride=stride)


# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------

class FcModel:
    def __init__(self, config, p):
        self.c, self.p = config, p

    def inject(self, x):
        return x.reshape(x.shape[0], -1) @ self.p["fc/inject/U"] + self.p["fc/inject/b"]

    def context(self):
        return None

    def cell(self, z, u, ctx):
        p = self.p
        pre = z @ p["fc/cell/W"] + u
        if self.c.get("norm", "layer") == "layer":
            pre = F.layer_norm(pre, (pre.shape[-1],), p["fc/cell/norm/gamma"], p["fc/cell/norm/beta"], 1e-5)
        return torch.relu(pre) if self.c.get("act", "relu") == "relu" else torch.tanh(pre)

    def head(self, z):
        return z @ self.p["fc/head/W"] + self.p["fc/head/b"]

    def init_state(self, u):
        return torch.zeros_like(u)

    def state_to_project(self, z):
        return z.reshape(-1).tolist()


class ConvModel:
    """Inputs arrive NHWC (the project's layout) and are permuted once per forward call; states are NCHW."""

    def __init__(self, config, p):
        self.c, self.p = config, p
        self.groups = config.get("groups", 4)
        self.wn = config.get("weightNorm", True)

    def inject(self, x):
        p, g = self.p, self.groups
        x = x.permute(0, 3, 1, 2)
        a = conv_same(x, p["conv/stem/conv1/w"], self.c.get("stemStride", 2))
        if self.c.get("stemNorm", "group") == "group":
            a = F.group_norm(a, g, p["conv/stem/gn1/gamma"], p["conv/stem/gn1/beta"], 1e-5)
        a = conv_same(torch.relu(a), p["conv/stem/conv2/w"])
        if self.c.get("stemNorm", "group") == "group":
            a = F.group_norm(a, g, p["conv/stem/gn2/gamma"], p["conv/stem/gn2/beta"], 1e-5)
        return a

    def context(self):
        """The effective cell filters, once per forward call (weight norm on the tape)."""
        def filt(prefix):
            if not self.wn:
                return self.p[prefix + "/w"]
            v, gain = self.p[prefix + "/v"], self.p[prefix + "/g"]
            return v * (gain / v.pow(2).sum((1, 2, 3)).sqrt()).view(-1, 1, 1, 1)
        return (filt("conv/cell/conv1"), filt("conv/cell/conv2"))

    def cell(self, z, u, ctx):
        p, g = self.p, self.groups
        w1, w2 = ctx
        a = torch.relu(F.group_norm(conv_same(z, w1), g, p["conv/cell/gn1/gamma"], p["conv/cell/gn1/beta"], 1e-5))
        b = F.group_norm(conv_same(a, w2) + u, g, p["conv/cell/gn2/gamma"], p["conv/cell/gn2/beta"], 1e-5) + z
        return F.group_norm(torch.relu(b), g, p["conv/cell/gn3/gamma"], p["conv/cell/gn3/beta"], 1e-5)

    def head(self, z):
        return z.mean((2, 3)) @ self.p["conv/head/W"] + self.p["conv/head/b"]

    def init_state(self, u):
        return torch.zeros_like(u)

    def state_to_project(self, z):
        return z.permute(0, 2, 3, 1).contiguous().reshape(-1).tolist()


# ---------------------------------------------------------------------------------------------------------------
# the workloads
# ---------------------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, data):
        config = data["config"]
        self.params = {w["name"]: to_torch(w["name"], w["shape"], w["values"]).requires_grad_() for w in data["weights"]}
        self.names = [w["name"] for w in data["weights"]]
        self.model = (FcModel if config["_tag"] == "fc" else ConvModel)(config, self.params)
        self.x = torch.tensor(data["x"], dtype=torch.float32).reshape(data["xShape"])
        self.y = torch.tensor(data["y"], dtype=torch.int64)
        self.z = torch.tensor(data["z"], dtype=torch.float32).reshape(data["zShape"]) if "z" in data else None
        s = data["spec"]
        self.budget, self.k, self.lam = s["budget"], s["tailK"], s["tailLambda"]
        self.adjoint, self.pgd_steps = s["adjointIterations"], s["pgdSteps"]
        self.eps, self.alpha, self.lr, self.states = s["eps"], s["alpha"], s["lr"], s["trainStates"]
        self.opt = torch.optim.Adam([self.params[n] for n in self.names], lr=self.lr)
        with torch.no_grad():
            u = self.model.inject(self.x)
            self.u, self.ctx = u, self.model.context()
            self.z_f = self.picard(u, self.ctx, 2) if self.z is None else self.state_from_project(self.z, u)

    def state_from_project(self, z, u):
        return z.permute(0, 3, 1, 2).contiguous() if u.dim() == 4 else z

    def picard(self, u, ctx, n):
        m = self.model
        z = m.init_state(u)
        for _ in range(n):
            z = m.cell(z, u, ctx)
        return z

    def tail_logits(self, x, n):
        """logits at state n through the tail; the solve runs without a tape (like the project's `untaped`)."""
        m = self.model
        u, ctx = m.inject(x), m.context()
        with torch.no_grad():
            z = self.picard(u, ctx, n)
        nxt = m.cell(z, u, ctx)
        for _ in range(self.k):
            fz = m.cell(nxt, u, ctx)
            nxt = fz if self.lam == 1 else nxt * (1 - self.lam) + fz * self.lam
        return m.head(nxt)

    def attack_grad(self, x_adv):
        x_adv = x_adv.detach().requires_grad_()
        loss = F.cross_entropy(self.tail_logits(x_adv, self.budget), self.y)
        (g,) = torch.autograd.grad(loss, x_adv)
        return g

    def pgd_step(self, x_adv):
        g = self.attack_grad(x_adv)
        with torch.no_grad():
            moved = x_adv + self.alpha * g.sign()
            return torch.clamp(torch.min(torch.max(moved, self.x - self.eps), self.x + self.eps), 0, 1)

    def train_step(self, n):
        x_adv = self.x.clone()
        for _ in range(self.pgd_steps):
            x_adv = self.pgd_step(x_adv)
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.tail_logits(x_adv, n), self.y).backward()
        self.opt.step()

    def implicit_grads(self):
        m = self.model
        u, ctx = m.inject(self.x), m.context()
        with torch.no_grad():
            z_star = self.picard(u, ctx, self.budget)
        z_star.requires_grad_()
        z1 = m.cell(z_star, u, ctx)
        h = z1.detach().requires_grad_()
        loss = F.cross_entropy(m.head(h), self.y)
        leaves = [self.params[n] for n in self.names]
        head_grads = torch.autograd.grad(loss, [h] + leaves, allow_unused=True)
        v = head_grads[0]
        g = v
        for _ in range(self.adjoint):
            (jt,) = torch.autograd.grad(z1, z_star, g, retain_graph=True)
            g = v + jt
        cell_grads = torch.autograd.grad(z1, leaves, g, allow_unused=True)
        return [a if b is None else (b if a is None else a + b) for a, b in zip(head_grads[1:], cell_grads)]

    def f(self):
        with torch.no_grad():
            return self.model.cell(self.z_f, self.u, self.ctx)

    def solve(self):
        with torch.no_grad():
            return self.picard(self.u, self.ctx, self.budget)

    def workload(self, name):
        if name == "f":
            return self.f
        if name == "solve":
            return self.solve
        if name == "implicit":
            return self.implicit_grads
        if name == "attack-step":
            return lambda: self.pgd_step(self.x)
        if name == "train-step":
            return lambda: [self.train_step(n) for n in self.states]
        raise ValueError("unknown workload " + name)

    def check(self):
        """Values in the project's layout, for bench/peer.ts to compare with its own (before any Adam step)."""
        leaves = [self.params[n] for n in self.names]
        loss = F.cross_entropy(self.tail_logits(self.x, self.states[0]), self.y)
        train = torch.autograd.grad(loss, leaves, allow_unused=True)
        implicit = self.implicit_grads()
        grads = lambda gs: {n: (to_project(g) if g is not None else None) for n, g in zip(self.names, gs)}
        return {
            "f": self.model.state_to_project(self.f()),
            "attackGrad": self.attack_grad(self.x).reshape(-1).tolist(),
            "trainLoss": float(loss),
            "trainGrads": grads(train),
            "implicitGrads": grads(implicit),
        }


def timed(fn, warmup, runs, reps):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        out.append((time.perf_counter() - start) * 1000.0 / reps)
    return out


def serve():
    benches = {}
    reply = lambda obj: (sys.stdout.write(json.dumps(obj) + "\n"), sys.stdout.flush())
    reply({"ready": True, "torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads()})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            op = cmd["op"]
            if op == "quit":
                reply({"ok": True})
                return
            if op == "load":
                with open(cmd["file"]) as fh:
                    benches[cmd["key"]] = Bench(json.load(fh))
                reply({"ok": True})
            elif op == "time":
                torch.set_num_threads(int(cmd["threads"]))
                b = benches[cmd["key"]]
                reply({"ms": timed(b.workload(cmd["workload"]), cmd.get("warmup", 0), cmd.get("runs", 1), cmd.get("reps", 1))})
            elif op == "check":
                torch.set_num_threads(1)
                reply(benches[cmd["key"]].check())
            elif op == "drop":
                benches.pop(cmd["key"], None)
                reply({"ok": True})
            else:
                reply({"error": "unknown op " + str(op)})
        except Exception as e:  # report, keep serving
            reply({"error": "%s: %s" % (type(e).__name__, e)})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true", help="read JSON commands from stdin (bench/peer.ts)")
    args = parser.parse_args()
    if not args.serve:
        parser.print_help()
        sys.exit(2)
    torch.manual_seed(0)
    serve()


if __name__ == "__main__":
    main()
