cluster "dev" {
  resources {
    accelerators = "L4:1"
  }
}

job "train" {
  cluster = cluster.dev
  run     = "python train.py"
  env     = { HF_HOME = "/data/hf" }
}
