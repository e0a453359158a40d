"""Where does a GPU training step of the mini model spend its time? Prints step times (wall and
CUDA events), the launch cost of a tiny CuPy operation, and cProfile tables.

    PYTHONPATH=. python3 .ci/profile_gpu_step.py       # on a machine with a GPU
"""
import cProfile
import io
import pstats
import time

import cupy as cp
import numpy as np

from bert_from_scratch.config import BertConfig
from bert_from_scratch.model import BertForPreTraining
from bert_from_scratch.bench.train_step import MINI, make_batch

cfg = BertConfig(**MINI, max_position_embeddings=512)
model = BertForPreTraining(cfg, seed=0, dtype=np.float32).to("cupy")
batch = tuple(cp.asarray(a) for a in make_batch(cfg, 32, 128, 20))
def step():
    model.forward(*batch, training=True); model.backward()
for _ in range(3): step()
cp.cuda.Device().synchronize()
t = []
for _ in range(5):
    t0 = time.perf_counter(); step(); cp.cuda.Device().synchronize(); t.append(time.perf_counter() - t0)
print("step ms", [round(x * 1e3, 1) for x in t])
# GPU time alone: CUDA events around the step
e0, e1 = cp.cuda.Event(), cp.cuda.Event()
e0.record(); step(); e1.record(); e1.synchronize(); print("event ms", cp.cuda.get_elapsed_time(e0, e1))
# launch overhead: 1000 tiny elementwise ops
x = cp.ones(16, cp.float32); cp.cuda.Device().synchronize()
t0 = time.perf_counter()
for _ in range(1000): x = x * 1.0001
cp.cuda.Device().synchronize(); print("us per tiny cupy op", (time.perf_counter() - t0) * 1e3)
pr = cProfile.Profile(); pr.enable()
for _ in range(3): step()
cp.cuda.Device().synchronize(); pr.disable()
s = io.StringIO(); st = pstats.Stats(pr, stream=s)
st.sort_stats("tottime").print_stats(25); st.sort_stats("cumulative").print_stats(30)
print(s.getvalue())
