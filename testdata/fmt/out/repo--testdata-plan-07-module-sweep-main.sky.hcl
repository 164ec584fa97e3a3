module "sweep" {
  source = "./modules/sweep"
  lrs    = ["3e-4", "1e-4", "3e-4"]
}

output "runs" {
  value = module.sweep.names
}
