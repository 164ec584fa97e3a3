locals {
  tag = uper("exp-1")
}

cluster "dev" {
  envs = { TAG = local.tag }
}
