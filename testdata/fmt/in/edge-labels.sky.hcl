variable x {
  type = set
}
variable y { type = "map" }
resource "a" b {
  n = 1
}
block "with \"esc\"" {}
