import os
os.environ["HIPPYNN_USE_CUSTOM_KERNELS"] = "False"
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch; torch.set_num_threads(1)
from openmm_cgnn.study import StudyConfig, run_transfer_study
cfg = StudyConfig.from_preset("small")
cfg.eval_states = ["250K:0.787g/cm3", "300K:0.787g/cm3", "400K:0.787g/cm3", "500K:0.787g/cm3", "300K:1bar"]
run_transfer_study("study-out", cfg)
