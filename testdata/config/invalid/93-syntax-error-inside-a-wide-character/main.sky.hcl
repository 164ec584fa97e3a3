module "x" {
 source = "./nope"
depends_on = [job.j, cluster.a, "x"]
for_each = toset([1, "a", null])
.ÏL𖿰