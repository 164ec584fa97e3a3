module "sweep" {
  source   = "./modules/sweep"
  lr_list  = ["1e-4", "3e-4"]
}
