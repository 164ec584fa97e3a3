module "sweep" {
  source = "./modules/sweeps"
  lrs    = ["1e-4", "3e-4"]
}
