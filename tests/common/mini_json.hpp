// A minimal JSON reader for the test fixtures (objects, arrays, numbers, strings, true/false/null).
#pragma once

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace mini_json {

struct value {
  enum kind_t { null_v, bool_v, num_v, str_v, arr_v, obj_v } kind = null_v;
  double num = 0;
  bool b = false;
  std::string str;
  std::vector<value> arr;
  std::map<std::string, value> obj;
  const value& operator[](const std::string& k) const { return obj.at(k); }
  const value& operator[](size_t i) const { return arr.at(i); }
  std::vector<double> doubles() const {
    std::vector<double> o;
    for (auto& v : arr) o.push_back(v.num);
    return o;
  }
  std::vector<int> ints() const {
    std::vector<int> o;
    for (auto& v : arr) o.push_back(static_cast<int>(v.num));
    return o;
  }
};

struct parser {
  const char* p;
  void ws() {
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') ++p;
  }
  value parse() {
    ws();
    value v;
    if (*p == '{') {
      v.kind = value::obj_v;
      ++p;
      ws();
      if (*p == '}') {
        ++p;
        return v;
      }
      while (true) {
        ws();
        std::string k = parse().str;
        ws();
        if (*p++ != ':') throw std::runtime_error("json: ':' expected");
        v.obj[k] = parse();
        ws();
        if (*p == ',') {
          ++p;
          continue;
        }
        if (*p++ != '}') throw std::runtime_error("json: '}' expected");
        return v;
      }
    }
    if (*p == '[') {
      v.kind = value::arr_v;
      ++p;
      ws();
      if (*p == ']') {
        ++p;
        return v;
      }
      while (true) {
        v.arr.push_back(parse());
        ws();
        if (*p == ',') {
          ++p;
          continue;
        }
        if (*p++ != ']') throw std::runtime_error("json: ']' expected");
        return v;
      }
    }
    if (*p == '"') {
      v.kind = value::str_v;
      ++p;
      while (*p != '"') {
        if (*p == '\\') ++p;
        v.str += *p++;
      }
      ++p;
      return v;
    }
    if (std::string(p, 4) == "true") {
      p += 4;
      v.kind = value::bool_v;
      v.b = true;
      return v;
    }
    if (std::string(p, 5) == "false") {
      p += 5;
      v.kind = value::bool_v;
      return v;
    }
    if (std::string(p, 4) == "null") {
      p += 4;
      return v;
    }
    char* end = nullptr;
    v.num = std::strtod(p, &end);
    if (end == p) throw std::runtime_error("json: unexpected character");
    v.kind = value::num_v;
    p = end;
    return v;
  }
};

inline value load(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  parser ps{text.c_str()};
  return ps.parse();
}

}  // namespace mini_json
