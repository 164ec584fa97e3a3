# A learning-rate sweep through the sweep module: three managed jobs, each on a temporary
# local cluster that is torn down when its job ends.

module "sweep" {
  source         = "../../modules/sweep"
  learning_rates = ["1e-4", "3e-4", "1e-3"]
  workdir        = "${path.root}/src"
}

output "jobs" {
  value = module.sweep.jobs
}
