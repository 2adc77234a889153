# cmake -DOUT=<file> -DPARTS=<a|b|c> -P concat.cmake: OUT is the parts one after the other.
string(REPLACE "|" ";" parts "${PARTS}")
file(WRITE "${OUT}.tmp" "")
foreach(p IN LISTS parts)
  file(READ "${p}" content)
  file(APPEND "${OUT}.tmp" "${content}")
endforeach()
file(RENAME "${OUT}.tmp" "${OUT}")
