variable "epochs" {
  type    = number
  default = 3
}

cluster "dev" {}

job "train" {
  cluster = cluster.dev
  run     = "python train.py --epochs ${var.epochs} --lr ${var.learning_rate}"
}
