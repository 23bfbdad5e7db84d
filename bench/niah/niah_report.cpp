// The main job: the NIAH-style report. Runs every preset (report.hpp's list) and the full cache
// over a grid of synthetic sequences and writes, under --out (default out/niah):
//   cases.csv           every (policy, budget, context, depth, seed) with its metrics
//   summary.md          the policy x budget table (also printed)
//   heatmap_<policy>.png  context (x) x depth (y, 0% at the top), colour = success rate over seeds,
//                       one panel per budget, left to right 96 .. 1024
//
// Usage: niah_report [--full] [--seeds N] [--threads N] [--out DIR] [--contexts a,b,...]
//                    [--depths a,b,...] [--distractors N]
#include "image.hpp"
#include "report.hpp"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace {

std::vector<double> parse_list(const char* s) {
  std::vector<double> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::atof(item.c_str()));
  return v;
}

struct cell {
  double success = 0, recall = 0, fidelity = 0, ms = 0, ms_big = 0;
  std::size_t bytes_big = 0;
  int n = 0, n_big = 0;
};

}  // namespace

int main(int argc, char** argv) {
  bool full = false;
  std::string out = "out/niah";
  niah_report::grid g = niah_report::default_grid(false);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* next = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--full")
      full = true, g = niah_report::default_grid(true);
    else if (a == "--seeds" && *next) {
      g.seeds.clear();
      for (int s = 1; s <= std::atoi(next); ++s) g.seeds.push_back(s);
      ++i;
    } else if (a == "--threads" && *next)
      g.threads = std::atoi(next), ++i;
    else if (a == "--out" && *next)
      out = next, ++i;
    else if (a == "--contexts" && *next) {
      g.contexts.clear();
      for (double c : parse_list(next)) g.contexts.push_back(int(c));
      ++i;
    } else if (a == "--depths" && *next)
      g.depths = parse_list(next), ++i;
    else if (a == "--distractors" && *next)
      g.distractors = std::atoi(next), ++i;
    else {
      std::fprintf(stderr,
                   "unknown argument '%s'\nusage: niah_report [--full] [--seeds N] [--threads N] [--out DIR] "
                   "[--contexts a,b,..] [--depths a,b,..] [--distractors N]\n",
                   a.c_str());
      return 2;
    }
  }
  (void)full;
  std::filesystem::create_directories(out);
  const std::size_t total = g.contexts.size() * g.depths.size() * g.seeds.size();
  std::printf("NIAH report: %zu sequences (contexts %d..%d, %zu depths, %zu seeds), budgets", total, g.contexts.front(),
              g.contexts.back(), g.depths.size(), g.seeds.size());
  for (int b : g.budgets) std::printf(" %d", b);
  std::printf(", %d threads\n", g.threads);
  const auto t0 = std::chrono::steady_clock::now();
  const auto results = niah_report::run(g, [&](std::size_t done, std::size_t all) {
    if (done == all || done % std::max<std::size_t>(1, all / 20) == 0)
      std::printf("  [%4zu/%zu] %5.1f s\n", done, all, niah_report::detail::ms_since(t0) / 1000.0), std::fflush(stdout);
  });

  // cases.csv
  std::ofstream csv(out + "/cases.csv");
  csv << "policy,budget,context,depth,seed,success,answer_recall,fidelity,plan_ms_per_layer,extra_bytes_per_layer\n";
  for (const auto& r : results)
    csv << r.policy << ',' << r.budget << ',' << r.context << ',' << r.depth << ',' << r.seed << ',' << r.success << ','
        << r.recall << ',' << r.fidelity << ',' << r.plan_ms << ',' << r.extra_bytes << '\n';

  // Aggregates: policy x budget, and policy x budget x context x depth for the heatmaps.
  std::vector<std::string> order;
  std::map<std::string, std::map<int, cell>> table;
  std::map<std::string, std::map<int, std::map<std::pair<int, double>, std::pair<double, int>>>> heat;
  const int big = g.contexts.back();
  for (const auto& r : results) {
    if (table.find(r.policy) == table.end()) order.push_back(r.policy);
    auto& c = table[r.policy][r.budget];
    c.success += r.success, c.recall += r.recall, c.fidelity += r.fidelity, c.ms += r.plan_ms, ++c.n;
    if (r.context == big) c.ms_big += r.plan_ms, c.bytes_big = std::max(c.bytes_big, r.extra_bytes), ++c.n_big;
    auto& h = heat[r.policy][r.budget][{r.context, r.depth}];
    h.first += r.success, ++h.second;
  }
  std::ostringstream md;
  md << "Synthetic NIAH (kvevict synthetic/niah.hpp): " << total << " sequences, contexts " << g.contexts.front()
     << ".." << big << ", " << g.depths.size() << " depths, " << g.seeds.size()
     << " seeds; 2 layers x 4 KV heads x 64 dims, 16 query heads.\n"
     << "Cells: success % / answer recall / fidelity. Time: plan (scoring + selection) per layer at " << big
     << " tokens, host, one thread.\n\n| policy |";
  for (int b : g.budgets) md << " budget " << b << " |";
  md << " ms/layer @" << big << " (budget 96) | extra KiB/layer |\n|---|";
  for (std::size_t i = 0; i < g.budgets.size(); ++i) md << "---|";
  md << "---|---|\n";
  char buf[128];
  for (const auto& p : order) {
    md << "| " << p << " |";
    for (int b : g.budgets) {
      const auto& c = table[p][b];
      std::snprintf(buf, sizeof buf, " %.1f / %.3f / %.3f |", 100.0 * c.success / c.n, c.recall / c.n,
                    c.fidelity / c.n);
      md << buf;
    }
    const auto& c = table[p][g.budgets.front()];
    std::snprintf(buf, sizeof buf, " %.2f | %.0f |\n", c.n_big ? c.ms_big / c.n_big : 0.0, c.bytes_big / 1024.0);
    md << buf;
  }
  std::ofstream(out + "/summary.md") << md.str();

  // Heatmaps.
  const int cw = 10, ch = 12, gap = 8;
  const int pw = int(g.contexts.size()) * cw, ph = int(g.depths.size()) * ch;
  for (const auto& p : order) {
    niah_report::image img(int(g.budgets.size()) * (pw + gap) + gap, ph + 2 * gap, {255, 255, 255});
    for (std::size_t b = 0; b < g.budgets.size(); ++b)
      for (std::size_t ci = 0; ci < g.contexts.size(); ++ci)
        for (std::size_t di = 0; di < g.depths.size(); ++di) {
          const auto& h = heat[p][g.budgets[b]][{g.contexts[ci], g.depths[di]}];
          img.rect(gap + int(b) * (pw + gap) + int(ci) * cw, gap + int(di) * ch, cw, ch,
                   niah_report::success_colour(h.second ? h.first / h.second : 0.0));
        }
    niah_report::write_png(out + "/heatmap_" + p + ".png", img);
  }
  std::printf("\n%s\nwrote %s/cases.csv, %s/summary.md, %s/heatmap_<policy>.png (%.1f s)\n", md.str().c_str(),
              out.c_str(), out.c_str(), out.c_str(), niah_report::detail::ms_since(t0) / 1000.0);
  return 0;
}
