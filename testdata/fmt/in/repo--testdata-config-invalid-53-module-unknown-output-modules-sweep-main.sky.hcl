variable "lrs" {
  type = list(string)
}

managed_job "ft" {
  for_each = toset(var.lrs)
  run      = "python finetune.py --lr ${each.value}"
}

output "job_names" {
  value = [for k, j in managed_job.ft : j.name]
}
