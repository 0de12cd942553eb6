"""The TensorRT backend's sampler loop (ping-pong buffers, t/dt tables, per-step CUDA graphs)
against an emulated device: no TensorRT or GPU needed, so CI checks its control flow.

The fakes keep device memory in one byte array addressed like the real pointers, engines
read and write it at the addresses set for each run, and "capture" records the engine runs
instead of executing them, as stream capture does; a graph launch replays them. The
engines compute a simple velocity whose Euler/CFG trajectory is checked against numpy.
"""

import numpy as np
import pytest

from v2m.runtime.backends import trt_backend as tb
from v2m.runtime.errors import BackendUnavailable


class FakeCuda:
    def __init__(self, fail_capture=False):
        self.mem = np.zeros(1 << 22, dtype=np.uint8)
        self.top = 256
        self.capturing = None
        self.fail_capture = fail_capture
        self.launches = self.captures = self.destroyed = 0
        self.freed = []

    def malloc(self, nbytes):
        ptr, self.top = self.top, self.top + -(-max(int(nbytes), 256) // 256) * 256
        return ptr

    def free(self, ptr):
        self.freed.append(ptr)

    def view(self, ptr, shape):
        n = int(np.prod(shape))
        return self.mem[ptr : ptr + 4 * n].view(np.float32).reshape(shape)

    def upload(self, ptr, a):
        a = np.ascontiguousarray(a, dtype=np.float32)
        self.view(ptr, a.shape)[...] = a

    def download(self, ptr, shape, dtype=np.float32):
        return self.view(ptr, shape).copy()

    def sync(self):
        pass

    def capture(self, enqueue):
        if self.fail_capture:
            raise BackendUnavailable("CUDA error cudaErrorStreamCaptureUnsupported")
        self.capturing = []
        enqueue()
        graph, self.capturing = self.capturing, None
        self.captures += 1
        return graph

    def launch(self, graph):
        self.launches += 1
        for op in graph:
            op()

    def destroy(self, graph):
        self.destroyed += 1


class FakeEngine:
    """Buffers at max shape, shapes set per call, `run` reads/writes the fake device memory."""

    def __init__(self, cuda, max_shapes, outputs, fn):
        self.cuda, self.max_shapes, self.fn, self.outputs = cuda, max_shapes, fn, outputs
        self.shapes = dict(max_shapes)
        self.buffers = {k: cuda.malloc(4 * int(np.prod(v))) for k, v in max_shapes.items()}
        self.runs = 0

    def set_shapes(self, shapes):
        self.shapes.update(shapes)

    def run(self, addresses=None):
        addr = {**self.buffers, **(addresses or {})}
        op = lambda: self._exec(addr)
        if self.cuda.capturing is not None:
            self.cuda.capturing.append(op)
        else:
            op()

    def _exec(self, addr):
        self.runs += 1
        ins = {k: self.cuda.view(addr[k], self.shapes[k]) for k in self.shapes if k not in self.outputs}
        for k, v in self.fn(ins).items():
            self.cuda.view(addr[k], v.shape)[...] = v


def dit_fn(ins):  # velocity = curve - t * x, on the doubled batch
    return {"velocity": ins["curve"] - ins["t"][:, None, None] * ins["x"]}


def step_fn(ins):  # guided Euler step; also the doubled batch of the next state
    b = ins["x"].shape[0]
    v = ins["velocity"][b:] + ins["scale"][0] * (ins["velocity"][:b] - ins["velocity"][b:])
    x_next = ins["x"] + ins["dt"][0] * v
    return {"x_next": x_next, "x2_next": np.concatenate([x_next, x_next])}


def make_backend(fail_capture=False, graphs=True, b=2, c=3, n=8, s=4, e=5):
    be = object.__new__(tb.TensorRTBackend)
    cuda = FakeCuda(fail_capture)
    dit = FakeEngine(cuda, {"x": (2 * b, c, n), "curve": (2 * b, 1, n), "t": (2 * b,), "text": (2 * b, s, e),
                            "text_mask": (2 * b, s), "velocity": (2 * b, c, n)}, {"velocity"}, dit_fn)
    step = FakeEngine(cuda, {"x": (b, c, n), "velocity": (2 * b, c, n), "scale": (1,), "dt": (1,),
                             "x_next": (b, c, n), "x2_next": (2 * b, c, n)}, {"x_next", "x2_next"}, step_fn)
    be.cuda, be.engines = cuda, {"dit": dit, "step": step}
    be._x = [step.buffers["x"], step.buffers["x_next"]]
    be._x2 = [cuda.malloc(4 * 2 * b * c * n), step.buffers["x2_next"]]
    be.cuda_graphs, be.max_graphs, be._tables = graphs, 2, tb.OrderedDict()
    return be


def reference(noise, curve, ts, scale, uncond_keeps_curve=True):
    x = noise.astype(np.float64)
    cu = curve if uncond_keeps_curve else np.zeros_like(curve)
    for i in range(len(ts) - 1):
        v_c, v_u = curve - ts[i] * x, cu - ts[i] * x
        x = x + (ts[i + 1] - ts[i]) * (v_u + scale * (v_c - v_u))
    return x


def _args(b, n, seed=0, steps=7):
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((b, 3, n)).astype(np.float32)
    curve = rng.random((b, 1, n)).astype(np.float32)
    text = rng.standard_normal((b, 4, 5)).astype(np.float32)
    mask = np.ones((b, 4), dtype=np.float32)
    ts = np.linspace(1.0, 0.0, steps + 1)
    return noise, curve, text, mask, ts


@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("uncond_keeps_curve", [True, False])
def test_loop_matches_reference(graphs, uncond_keeps_curve):
    be = make_backend(graphs=graphs)
    noise, curve, text, mask, ts = _args(2, 8)
    seen = []
    x = be.sample(noise, curve, text, mask, ts, 3.0, uncond_keeps_curve, seen.append)
    np.testing.assert_allclose(x, reference(noise, curve, ts, 3.0, uncond_keeps_curve), rtol=1e-5, atol=1e-5)
    assert seen == list(range(7))
    assert be.cuda.launches == (7 if graphs else 0) and be.cuda.captures == (7 if graphs else 0)


def test_graphs_reused_then_recaptured_after_a_shape_change():
    be = make_backend()
    a = _args(2, 8)
    x1 = be.sample(*a[:4], a[4], 2.0)
    x2 = be.sample(*a[:4], a[4], 2.0)
    assert np.array_equal(x1, x2) and be.cuda.captures == 7 and be.cuda.launches == 14
    short = _args(1, 5, seed=1)
    x3 = be.sample(*short[:4], short[4], 2.0)  # another shape: the first shape's graphs are dropped
    np.testing.assert_allclose(x3, reference(short[0], short[1], short[4], 2.0), rtol=1e-5, atol=1e-5)
    assert be.cuda.destroyed == 7 and be.cuda.captures == 14
    x4 = be.sample(*a[:4], a[4], 2.0)  # back: recaptured (TensorRT's rule), same answer
    assert np.array_equal(x1, x4) and be.cuda.captures == 21


def test_capture_failure_falls_back_with_a_warning(caplog):
    be = make_backend(fail_capture=True)
    noise, curve, text, mask, ts = _args(2, 8)
    x = be.sample(noise, curve, text, mask, ts, 3.0)
    np.testing.assert_allclose(x, reference(noise, curve, ts, 3.0), rtol=1e-5, atol=1e-5)
    assert not be.cuda_graphs and "capture failed" in caplog.text


def test_lru_frees_tables():
    be = make_backend()
    for n in (8, 7, 6):
        a = _args(1, n)
        be.sample(*a[:4], a[4], 2.0)
    assert len(be._tables) == 2 and len(be.cuda.freed) == 2  # the oldest shape's t and dt tables
