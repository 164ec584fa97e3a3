cluster "dev" {}

output "sweep_jobs" {
  value = module.sweep.jobs
}
