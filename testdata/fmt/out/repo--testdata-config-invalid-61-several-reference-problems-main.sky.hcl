variable "epochs" {
  type    = number
  default = 3
}

cluster "dev" {}

job "train" {
  cluster = cluster.devv
  run     = "python train.py --epochs ${var.epoch} --tag ${local.tag}"
}
