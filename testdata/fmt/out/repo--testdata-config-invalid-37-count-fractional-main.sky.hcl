variable "gpus" {
  type    = list(string)
  default = ["A100:8", "H100:8", "L4:1"]
}

cluster "pair" {
  count = length(var.gpus) / 2
  resources {
    accelerators = var.gpus[count.index]
  }
}
