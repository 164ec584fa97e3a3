module "sweep" {
  source = "./modules/sweep"
  lrs    = ["1e-4", "3e-4"]
}

output "sweep_jobs" {
  value = module.sweep.job_name
}
