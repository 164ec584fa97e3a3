locals {
  a   = 1
  bb  = "é"
  ccc = "日本語" # 注
  d   = "x"   # c
}
