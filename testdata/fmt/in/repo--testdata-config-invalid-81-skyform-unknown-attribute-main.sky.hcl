cluster "dev" {
  envs = { STAGE = skyform.workspace, BAD = skyform.workpsace }
}
