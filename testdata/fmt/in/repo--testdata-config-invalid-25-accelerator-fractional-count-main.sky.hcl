cluster "gpu" {
  resources {
    accelerators = "A100:8"
  }
}

job "train" {
  cluster = cluster.gpu
  resources {
    accelerators = "A100:1.5"
  }
  run = "python train.py"
}
