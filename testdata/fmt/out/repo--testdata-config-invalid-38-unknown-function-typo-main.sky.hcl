variable "args" {
  type    = list(string)
  default = ["--epochs", "3"]
}

cluster "dev" {}

job "train" {
  cluster = cluster.dev
  run     = "python train.py ${jion(" ", var.args)}"
}
