variable "models" {
  type = map(string)
  default = {
    small = "A10G:1"
    large = "L4:1"
  }
}

variable "prefix" {
  type    = string
  default = "exp"
}

locals {
  tags = merge({ team = "ml" }, { owner = upper(var.prefix) })
}

cluster "gpu" {
  resources {
    accelerators = "L4:1"
  }
  envs = local.tags
}

job "eval" {
  for_each = var.models
  cluster  = cluster.gpu
  run      = join(" ", ["python eval.py", "--name", "${var.prefix}-${each.key}", "--gpu", lower(each.value)])
}
