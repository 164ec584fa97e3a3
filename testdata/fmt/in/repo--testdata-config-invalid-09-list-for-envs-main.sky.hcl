cluster "dev" {
  num_nodes = 1
  envs      = ["HF_HOME=/data/hf", "WANDB_MODE=offline"]
  resources {
    cpus = "4+"
  }
}
