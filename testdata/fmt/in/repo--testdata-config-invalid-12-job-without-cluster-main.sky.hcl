cluster "dev" {
  resources {
    cpus = "4+"
  }
}

job "train" {
  run = "python train.py"
}
