cluster "gpu" {
  resources {
    accelerators = "A100:2"
  }
  envs = {
    HF_HOME              = "/data/hf"
    CUDA_VISIBLE_DEVICES = [0, 1]
  }
}
