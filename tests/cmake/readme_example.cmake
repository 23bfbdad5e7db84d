# Checks that README.md shows examples/readme_example.cpp verbatim.
file(READ ${SOURCE_DIR}/README.md readme)
file(READ ${SOURCE_DIR}/examples/readme_example.cpp example)
string(FIND "${readme}" "${example}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md does not contain examples/readme_example.cpp verbatim")
endif()
