"""One long (10-epoch) run for the confound check in benchmarks/results/issue-6.md.

    PYTHONPATH=src python benchmarks/privacy_long_run.py {noclip|clip|EPSILON} EPOCHS RATE

noclip: same SGD recipe as DP (batch 256, momentum 0.9) at lr 0.1, no clipping, no noise;
clip: clipping at C = 1 only; EPSILON: DP-SGD at that epsilon (delta 1e-5, PRV).
"""
import json, sys, time, torch
from poisonguard.attacks import badnets_trigger, poison_dataset
from poisonguard.data import load_data
from poisonguard.models import build_model
from poisonguard.privacy import DPSGD, GradientShaping
from poisonguard.train import evaluate
torch.set_num_threads(1)
s = load_data("mnist5k"); trig = badnets_trigger(s.input_shape, target=0, size=3)
which, epochs, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
data = poison_dataset(s.train, trig, rate=rate, seed=0).data
m = build_model("mnist_cnn", num_classes=10, input_shape=s.input_shape); t = time.perf_counter()
if which == "noclip":
    m, p = GradientShaping(noise_multiplier=0.0, max_grad_norm=1e6, lr=0.1, epochs=epochs, seed=0, device="cpu").fit(m, data)
elif which == "clip":
    m, p = GradientShaping(noise_multiplier=0.0, max_grad_norm=1.0, epochs=epochs, seed=0, device="cpu").fit(m, data)
else:
    m, p = DPSGD(epsilon=float(which), delta=1e-5, epochs=epochs, seed=0, device="cpu").fit(m, data)
ev = evaluate(m, s.test, trig)
print(json.dumps({"poison": rate, "run": which, "epochs": epochs, "sigma": p.noise_multiplier, "epsilon": p.epsilon, "clean_accuracy": ev.clean_accuracy, "attack_success_rate": ev.attack_success_rate, "seconds": round(time.perf_counter()-t, 1)}), flush=True)
