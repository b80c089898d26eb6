import torch

# Two cores are shared by the whole suite; one thread per test process keeps timings predictable.
torch.set_num_threads(1)
