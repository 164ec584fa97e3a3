cluster "dev" {
  resources {
    cpus = "4+"
  }
}

job "train" {
  cluster = cluster.devv
  run     = "python train.py"
}
