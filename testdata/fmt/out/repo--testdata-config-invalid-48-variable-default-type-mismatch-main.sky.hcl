variable "epochs" {
  type    = number
  default = "three"
}

cluster "dev" {}

job "train" {
  cluster = cluster.dev
  run     = "python train.py --epochs ${var.epochs}"
}
