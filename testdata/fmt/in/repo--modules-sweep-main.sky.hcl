# A hyperparameter sweep: one managed job per learning rate. Each gets its own temporary
# cluster, torn down when the job ends.

variable "learning_rates" {
  type        = list(string)
  description = "One managed job per value."
}

variable "script" {
  type    = string
  default = "finetune.sh"
}

variable "workdir" {
  type        = string
  description = "Directory synced to each job's cluster, relative to the caller."
}

variable "accelerators" {
  type    = list(string)
  default = []
}

managed_job "run" {
  for_each = toset(var.learning_rates)
  workdir  = var.workdir
  resources {
    cpus = "1+"
  }
  envs = { LEARNING_RATE = each.value }
  run  = "sh ${var.script} ${each.value}"
  recovery {
    strategy               = "failover"
    max_restarts_on_errors = 1
  }
}

output "jobs" {
  value = [for lr, job in managed_job.run : job.address]
}
