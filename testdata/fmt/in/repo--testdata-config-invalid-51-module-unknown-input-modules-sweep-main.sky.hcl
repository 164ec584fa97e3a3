variable "lrs" {
  type = list(string)
}

managed_job "ft" {
  for_each = toset(var.lrs)
  run      = "python finetune.py --lr ${each.value}"
}
