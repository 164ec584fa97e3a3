cluster "dev" {
  num_nodes = 1
  envs {
    HF_HOME = "/data/hf"
  }
  resources {
    cpus = "4+"
  }
}
