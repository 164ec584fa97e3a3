variable "lrs" {
  type = list(string)
}

variable "script" {
  type    = string
  default = "finetune.py"
}

managed_job "run" {
  for_each = toset(var.lrs)
  resources {
    use_spot = false
    any_of { accelerators = "L4:1" }
    any_of { accelerators = "A100:1" }
  }
  run = "python ${var.script} --lr ${each.value}"
  recovery {
    strategy               = "failover"
    max_restarts_on_errors = 2
  }
}

output "names" {
  value = [for k, j in managed_job.run : j.address]
}
