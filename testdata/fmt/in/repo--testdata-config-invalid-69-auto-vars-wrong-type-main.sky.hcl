variable "epochs" {
  type = number
}

cluster "dev" {}

job "train" {
  cluster = cluster.dev
  run     = "python train.py --epochs ${var.epochs}"
}
