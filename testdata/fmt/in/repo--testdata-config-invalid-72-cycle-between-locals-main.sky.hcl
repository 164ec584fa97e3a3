locals {
  run_name = "${local.prefix}-run"
  prefix   = "exp-${local.run_name}"
}

cluster "dev" {
  envs = { RUN_NAME = local.run_name }
}
