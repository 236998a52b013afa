// MVAM window attention, fused forward and backward (docs/design.md §3.1), compiled once per ISA.
//
// Shared-corner trick: the R x R candidates of one neighbour slot sit at integer offsets from one
// projected point, so they all have the same fractional part (fx, fy) and their bilinear corners
// form one (R+1) x (R+1) grid of pixels. Each query therefore takes (R+1)^2 dot products per
// slot and head instead of 4 R^2, and the value side accumulates one coefficient per grid pixel
// before touching V. Per query, the logits of all candidates (N*R*R*heads scalars) are computed
// first, then the softmax, then the weighted sum: this is the online softmax's single pass over
// the queries without its per-candidate rescaling of the C-wide accumulator, and nothing of size
// candidates x C ever exists. Backward recomputes the logits from q and k and the saved per-query
// log-sum-exp.
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "kernels/vec.h"
#include "window_attention.h"

namespace vsad {
namespace VSAD_ISA {
namespace {

inline int64_t imin(int64_t x, int64_t y) { return x < y ? x : y; }

// Bump allocation of 64-byte aligned arrays out of one buffer. With a null base it only adds up
// the bytes, so the host can size the buffer with the same code that carves it.
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <typename U>
  U* take(int64_t n) {
    U* p = base_ ? reinterpret_cast<U*>(base_ + used_) : nullptr;
    used_ += (sizeof(U) * size_t(n > 1 ? n : 1) + 63) / 64 * 64;
    return p;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

// Per-thread buffers for one query, carved from the call's scratch block (allocated by the host
// before the parallel region: nothing here can fail).
template <typename T>
struct QueryScratch {
  int64_t* grid = nullptr;          // N*G: element offset of the grid pixel in k/v, -1 = unused
  unsigned char* valid = nullptr;   // N*RR
  unsigned char* active = nullptr;  // N
  T* frac = nullptr;                // N*2: (fx, fy) per slot
  T* logits = nullptr;              // N*RR*heads, overwritten by the attention weights
  T* gdot = nullptr;                // G*heads: dot products with the grid pixels of one slot
  T* coef_a = nullptr;              // G: per-grid-pixel coefficients of one slot and head
  T* coef_b = nullptr;              // G
  int64_t* idx = nullptr;           // G: the used grid pixels of the current slot
  int64_t used = 0;                 //    and their count
  int64_t* cand = nullptr;          // RR: the valid candidates of the current slot
  T* pos_dot = nullptr;             // RR
  const T** rows = nullptr;         // RR+G: row pointers for dot_many / axpy_many
  T* coefs = nullptr;               // RR+G
  T* row_terms = nullptr;           // heads
  int64_t* flat = nullptr;          // N*RR: logits offsets of all valid candidates of the query
  T* soft = nullptr;                // N*RR: one head's valid logits, gathered for the softmax
  // Per-candidate constants (column, row, top-left grid pixel), tabulated once: the divisions by
  // a run-time R were a visible share of the per-query cost.
  int64_t* cand_x = nullptr;        // RR: r % R
  int64_t* cand_y = nullptr;        // RR: r / R
  int64_t* corner = nullptr;        // RR: (r / R) * (R + 1) + r % R
  // Backward scatter: this thread's channel range, split at head boundaries.
  int64_t* seg_h = nullptr;         // heads
  int64_t* seg_lo = nullptr;        // heads
  int64_t* seg_len = nullptr;       // heads
  int64_t segs = 0;

  QueryScratch(Carver& c, int64_t N, int64_t R, int64_t heads) {
    const int64_t G = (R + 1) * (R + 1), RR = R * R;
    grid = c.take<int64_t>(N * G);
    valid = c.take<unsigned char>(N * RR);
    active = c.take<unsigned char>(N);
    frac = c.take<T>(N * 2);
    logits = c.take<T>(N * RR * heads);
    gdot = c.take<T>(G * heads);
    coef_a = c.take<T>(G);
    coef_b = c.take<T>(G);
    idx = c.take<int64_t>(G);
    cand = c.take<int64_t>(RR);
    pos_dot = c.take<T>(RR);
    rows = c.take<const T*>(RR + G);
    coefs = c.take<T>(RR + G);
    row_terms = c.take<T>(heads);
    flat = c.take<int64_t>(N * RR);
    soft = c.take<T>(N * RR);
    cand_x = c.take<int64_t>(RR);
    cand_y = c.take<int64_t>(RR);
    corner = c.take<int64_t>(RR);
    seg_h = c.take<int64_t>(heads);
    seg_lo = c.take<int64_t>(heads);
    seg_len = c.take<int64_t>(heads);
    if (!grid) return;  // sizing pass
    for (int64_t r = 0; r < RR; ++r) {
      cand_x[r] = r % R;
      cand_y[r] = r / R;
      corner[r] = cand_y[r] * (R + 1) + cand_x[r];
    }
  }

  // One query scratch per thread, from `base` (or sized, with base = nullptr).
  static size_t bytes(int64_t N, int64_t R, int64_t heads) {
    Carver c(nullptr);
    QueryScratch<T> sizing(c, N, R, heads);
    return c.used();
  }
};

// What the backward records per query for the dk/dv scatter: the grid pixels the query read,
// with per-head coefficients; dk at the pixel gets kc * q_h, dv gets vc * dout_h.
template <typename T>
struct Record {
  int64_t* koff = nullptr;  // N*G: element offset of the grid pixel in k/v, -1 = not read
  T* kc = nullptr;          // N*G*heads: d loss / d <q, k(pixel)>
  T* vc = nullptr;          // N*G*heads: weight of the pixel's v in out

  Record() = default;
  Record(Carver& c, int64_t N, int64_t R, int64_t heads) {
    const int64_t G = (R + 1) * (R + 1);
    koff = c.take<int64_t>(N * G);
    kc = c.take<T>(N * G * heads);
    vc = c.take<T>(N * G * heads);
  }
  static size_t bytes(int64_t N, int64_t R, int64_t heads) {
    Carver c(nullptr);
    Record<T> sizing(c, N, R, heads);
    return c.used();
  }
};

// Scratch budgets of the backward, whatever the thread count or the image size (the previous
// per-thread dk/dv copies took (threads - 1) * 2 * B*M*H*W*C elements, unbounded):
//  - private copies of dk/dv for threads 1..nt-1 (the fastest scheme: every thread scatters at
//    once, one reduction pass at the end) only while they fit kPrivateBudget;
//  - otherwise one chunk of per-query records, kRecordBudget, small enough to stay in L2
//    between the two phases.
// Both are within the pool's cap (scratch.h), so they stay mapped between calls.
constexpr size_t kPrivateBudget = size_t(8) << 20;
constexpr size_t kRecordBudget = size_t(1) << 20;

enum class Scatter { direct, private_copies, records };

// Scratch of one backward call: per thread a query scratch and dpos_k/dpos_v accumulators
// (N*R*R*C each, small), then the private dk/dv copies or one chunk of records.
template <typename T>
struct BackwardLayout {
  size_t query_bytes, pos_bytes, record_bytes, private_bytes, total;
  int64_t chunk;  // queries per chunk of records
  Scatter scatter;
  explicit BackwardLayout(const WindowAttentionArgs<T>& a) {
    const int64_t Q = a.B * a.M * a.H * a.W;
    query_bytes = QueryScratch<T>::bytes(a.N, a.R, a.heads);
    pos_bytes = (sizeof(T) * size_t(2 * a.N * a.R * a.R * a.C) + 63) / 64 * 64;
    record_bytes = Record<T>::bytes(a.N, a.R, a.heads);
    private_bytes = sizeof(T) * size_t(a.num_threads - 1) * 2 * size_t(Q * a.C);
    const int64_t fit = int64_t(kRecordBudget / record_bytes);
    chunk = 0;
    scatter = a.num_threads == 1 ? Scatter::direct : Scatter::private_copies;
    if (private_bytes > kPrivateBudget) {
      scatter = Scatter::records;
      private_bytes = 0;
      chunk = fit < 1 ? 1 : (fit < Q ? fit : Q);
    }
    if (scatter == Scatter::direct) private_bytes = 0;
    total = size_t(a.num_threads) * (query_bytes + pos_bytes) + private_bytes +
            size_t(chunk) * record_bytes;
  }
};

// Projects query pixel (x, y) of view i (batch b) into every neighbour slot and fills the
// candidate validity and the grid of pixels their bilinear samples read. Returns whether any
// candidate is valid.
template <typename T>
bool build_geometry(const WindowAttentionArgs<T>& a, int64_t b, int64_t i, int64_t y, int64_t x,
                    QueryScratch<T>& s) {
  const int64_t R = a.R, RR = R * R, G = (R + 1) * (R + 1), N = a.N;
  const double half = double(R - 1) * 0.5;
  const double xmax = double(a.W - 1), ymax = double(a.H - 1);
  bool any = false;
  for (int64_t n = 0; n < N; ++n) {
    s.active[n] = 0;
    unsigned char* valid = s.valid + n * RR;
    int64_t* grid = s.grid + n * G;
    std::memset(valid, 0, size_t(RR));
    for (int64_t g = 0; g < G; ++g) grid[g] = -1;
    const int64_t j = a.neighbors[i * N + n];
    if (j < 0) continue;
    const int64_t hb = a.hom_batch == 1 ? 0 : b;
    const double* Hm = a.homography + ((hb * a.M + i) * N + n) * 9;
    const double xd = double(x), yd = double(y);
    const double px = Hm[0] * xd + Hm[1] * yd + Hm[2];
    const double py = Hm[3] * xd + Hm[4] * yd + Hm[5];
    const double pw = Hm[6] * xd + Hm[7] * yd + Hm[8];
    if (!(pw > 1e-8)) continue;
    // Top-left candidate of the window; candidate (a, b) sits at (bx + a, by + b).
    const double bx = px / pw - half, by = py / pw - half;
    if (!(bx <= xmax && bx + double(R - 1) >= 0.0 && by <= ymax && by + double(R - 1) >= 0.0))
      continue;  // whole window outside the image (also rejects NaN)
    const double x0 = std::floor(bx), y0 = std::floor(by);
    const int64_t ix0 = int64_t(x0), iy0 = int64_t(y0);
    const int64_t view_base = (b * a.M + j) * a.H * a.W;
    s.frac[2 * n] = T(bx - x0);
    s.frac[2 * n + 1] = T(by - y0);
    if (ix0 >= 0 && iy0 >= 0 && ix0 + R <= a.W - 1 && iy0 + R <= a.H - 1) {
      // Interior window (the common case): every candidate is valid and every grid pixel inside.
      std::memset(valid, 1, size_t(RR));
      for (int64_t gy = 0; gy <= R; ++gy)
        for (int64_t gx = 0; gx <= R; ++gx)
          grid[gy * (R + 1) + gx] = (view_base + (iy0 + gy) * a.W + ix0 + gx) * a.C;
      s.active[n] = 1;
      any = true;
      continue;
    }
    bool slot_any = false;
    for (int64_t r = 0; r < RR; ++r) {
      const double sx = bx + double(s.cand_x[r]), sy = by + double(s.cand_y[r]);
      const bool ok = sx >= 0.0 && sx <= xmax && sy >= 0.0 && sy <= ymax;
      valid[r] = ok;
      slot_any |= ok;
    }
    if (!slot_any) continue;
    s.active[n] = 1;
    any = true;
    // Mark the grid pixels some valid candidate reads; pixels outside the image stay -1 (they
    // only ever carry a zero or rounding-level weight, as grid_sample's zero padding).
    for (int64_t r = 0; r < RR; ++r) {
      if (!valid[r]) continue;
      const int64_t ca = s.cand_x[r], cb = s.cand_y[r];
      for (int64_t dy = 0; dy < 2; ++dy)
        for (int64_t dx = 0; dx < 2; ++dx) {
          const int64_t X = ix0 + ca + dx, Y = iy0 + cb + dy;
          if (X < 0 || X >= a.W || Y < 0 || Y >= a.H) continue;
          grid[(cb + dy) * (R + 1) + ca + dx] = (view_base + Y * a.W + X) * a.C;
        }
    }
  }
  return any;
}

// Lists the valid candidates (s.cand) and used grid pixels (s.idx) of slot n; returns the
// number of valid candidates.
template <typename T>
int64_t list_slot(QueryScratch<T>& s, int64_t n, int64_t RR, int64_t G) {
  int64_t nv = 0;
  for (int64_t r = 0; r < RR; ++r)
    if (s.valid[n * RR + r]) s.cand[nv++] = r;
  s.used = 0;
  for (int64_t g = 0; g < G; ++g)
    if (s.grid[n * G + g] >= 0) s.idx[s.used++] = g;
  return nv;
}

// gdot[g, h] = <lhs_h, src[grid g]_h> for the used grid pixels of the slot, 0 elsewhere.
template <typename T>
void grid_dots(const T* lhs, const T* src, const int64_t* grid, int64_t G, int64_t heads,
               int64_t d, QueryScratch<T>& s) {
  for (int64_t e = 0; e < G * heads; ++e) s.gdot[e] = T(0);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t t = 0; t < s.used; ++t) s.rows[t] = src + grid[s.idx[t]] + h * d;
    dot_many(lhs + h * d, s.rows, s.used, d, s.coefs);
    for (int64_t t = 0; t < s.used; ++t) s.gdot[s.idx[t] * heads + h] = s.coefs[t];
  }
}

// Bilinear weights of the four grid corners of a candidate, in (g, g+1, g+R+1, g+R+2) order.
template <typename T>
inline void corner_weights(const T* frac, T* w) {
  const T fx = frac[0], fy = frac[1];
  w[0] = (T(1) - fx) * (T(1) - fy);
  w[1] = fx * (T(1) - fy);
  w[2] = (T(1) - fx) * fy;
  w[3] = fx * fy;
}

template <typename T>
inline T bilinear(const T* gd, int64_t g, int64_t R, int64_t heads, const T* w) {
  return w[0] * gd[g * heads] + w[1] * gd[(g + 1) * heads] + w[2] * gd[(g + R + 1) * heads] +
         w[3] * gd[(g + R + 2) * heads];
}

// Fills s.logits with scale * <q_h, k_h(s) + pos_k[n, r]_h> for every valid candidate.
template <typename T>
void compute_logits(const WindowAttentionArgs<T>& a, const T* q, QueryScratch<T>& s) {
  const int64_t R = a.R, RR = R * R, G = (R + 1) * (R + 1), heads = a.heads, d = a.C / heads;
  const T scale = T(a.scale);
  for (int64_t n = 0; n < a.N; ++n) {
    if (!s.active[n]) continue;
    const int64_t nv = list_slot(s, n, RR, G);
    grid_dots(q, a.k, s.grid + n * G, G, heads, d, s);
    T w[4];
    corner_weights(s.frac + 2 * n, w);
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t t = 0; t < nv; ++t) s.rows[t] = a.pos_k + (n * RR + s.cand[t]) * a.C + h * d;
      dot_many(q + h * d, s.rows, nv, d, s.pos_dot);
      for (int64_t t = 0; t < nv; ++t) {
        const int64_t r = s.cand[t];
        const T kq = bilinear(s.gdot + h, s.corner[r], R, heads, w);
        s.logits[(n * RR + r) * heads + h] = scale * (kq + s.pos_dot[t]);
      }
    }
  }
}

// Adds c·w to the four grid corners of a candidate.
template <typename T>
inline void spread(T* coef, int64_t g, int64_t R, T c, const T* w) {
  coef[g] += c * w[0];
  coef[g + 1] += c * w[1];
  coef[g + R + 1] += c * w[2];
  coef[g + R + 2] += c * w[3];
}

template <typename T>
void forward_query(const WindowAttentionForward<T>& a, int64_t b, int64_t i, int64_t y, int64_t x,
                   QueryScratch<T>& s) {
  const int64_t R = a.R, RR = R * R, G = (R + 1) * (R + 1), heads = a.heads, d = a.C / heads;
  const int64_t qi = ((b * a.M + i) * a.H + y) * a.W + x;
  const T* q = a.q + qi * a.C;
  T* o = a.out + qi * a.C;
  T* lse = a.lse + qi * heads;
  std::memset(o, 0, sizeof(T) * size_t(a.C));
  if (!build_geometry<T>(a, b, i, y, x, s)) {
    for (int64_t h = 0; h < heads; ++h) lse[h] = -std::numeric_limits<T>::infinity();
    return;
  }
  compute_logits<T>(a, q, s);

  // Softmax over the valid candidates of each head.
  int64_t nvalid = 0;
  for (int64_t n = 0; n < a.N; ++n)
    if (s.active[n])
      for (int64_t r = 0; r < RR; ++r)
        if (s.valid[n * RR + r]) s.flat[nvalid++] = (n * RR + r) * heads;
  for (int64_t h = 0; h < heads; ++h) {
    T* l = s.logits + h;
    T m = l[s.flat[0]];
    for (int64_t t = 1; t < nvalid; ++t) m = l[s.flat[t]] > m ? l[s.flat[t]] : m;
    for (int64_t t = 0; t < nvalid; ++t) s.soft[t] = l[s.flat[t]] - m;
    exp_inplace(s.soft, nvalid);
    T sum = 0;
    for (int64_t t = 0; t < nvalid; ++t) sum += s.soft[t];
    const T inv = T(1) / sum;
    for (int64_t t = 0; t < nvalid; ++t) l[s.flat[t]] = s.soft[t] * inv;
    lse[h] = m + std::log(sum);
  }

  // out_h = sum_c alpha_c (v_h(s_c) + pos_v[c]_h): one weighted sum per slot and head over the
  // candidates' pos_v rows and the grid pixels' v rows.
  for (int64_t n = 0; n < a.N; ++n) {
    if (!s.active[n]) continue;
    const int64_t nv = list_slot(s, n, RR, G);
    const int64_t* grid = s.grid + n * G;
    T w[4];
    corner_weights(s.frac + 2 * n, w);
    for (int64_t h = 0; h < heads; ++h) {
      zero(s.coef_a, G);
      int64_t count = 0;
      for (int64_t t = 0; t < nv; ++t) {
        const int64_t r = s.cand[t];
        const T al = s.logits[(n * RR + r) * heads + h];
        spread(s.coef_a, s.corner[r], R, al, w);
        s.rows[count] = a.pos_v + (n * RR + r) * a.C + h * d;
        s.coefs[count++] = al;
      }
      for (int64_t t = 0; t < s.used; ++t) {
        s.rows[count] = a.v + grid[s.idx[t]] + h * d;
        s.coefs[count++] = s.coef_a[s.idx[t]];
      }
      axpy_many(o + h * d, s.coefs, s.rows, count, d);
    }
  }
}

template <typename T>
void forward_impl(const WindowAttentionForward<T>& a) {
  const int64_t rows = a.B * a.M * a.H;
  const size_t per_thread = QueryScratch<T>::bytes(a.N, a.R, a.heads);
#pragma omp parallel num_threads(a.num_threads)
  {
    Carver carve(static_cast<char*>(a.scratch) + size_t(omp_get_thread_num()) * per_thread);
    QueryScratch<T> s(carve, a.N, a.R, a.heads);
#pragma omp for schedule(dynamic, 1)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t y = row % a.H, i = (row / a.H) % a.M, b = row / (a.H * a.M);
      for (int64_t x = 0; x < a.W; ++x) forward_query<T>(a, b, i, y, x, s);
    }
  }
}

// y0 += c0 * x0 and y1 += c1 * x1 over n elements.
template <typename T>
inline void axpy2(T* __restrict y0, T c0, const T* __restrict x0, T* __restrict y1, T c1,
                  const T* __restrict x1, int64_t n) {
#pragma omp simd
  for (int64_t e = 0; e < n; ++e) {
    y0[e] += c0 * x0[e];
    y1[e] += c1 * x1[e];
  }
}

// One query of the backward: dq in place, dpos into this thread's accumulators, and for dk/dv
// either the updates themselves, into `dk`/`dv` (Direct: the outputs or this thread's private
// copies), or the query's coefficients in `rec` (applied in phase B).
template <typename T, bool Direct>
void backward_query(const WindowAttentionBackward<T>& a, int64_t qi, Record<T>& rec, T* dk,
                    T* dv, T* dpos_k, T* dpos_v, QueryScratch<T>& s) {
  const int64_t R = a.R, RR = R * R, G = (R + 1) * (R + 1), heads = a.heads, d = a.C / heads;
  const int64_t x = qi % a.W, y = (qi / a.W) % a.H, i = (qi / (a.W * a.H)) % a.M;
  const int64_t b = qi / (a.W * a.H * a.M);
  const T* q = a.q + qi * a.C;
  const T* go = a.grad_out + qi * a.C;
  const T* o = a.out + qi * a.C;
  const T* lse = a.lse + qi * heads;
  T* dq = a.grad_q + qi * a.C;
  std::memset(dq, 0, sizeof(T) * size_t(a.C));
  const bool any = build_geometry<T>(a, b, i, y, x, s);
  // build_geometry leaves grid = -1 wherever nothing is read: phase B skips those pixels.
  if (!Direct) std::memcpy(rec.koff, s.grid, sizeof(int64_t) * size_t(a.N * G));
  if (!any) return;
  compute_logits<T>(a, q, s);
  const T scale = T(a.scale);

  // D_h = <dout_h, out_h> = sum_c alpha_c <dout_h, v_c + pos_v_c>: the softmax backward's row term.
  T* D = s.row_terms;
  for (int64_t h = 0; h < heads; ++h) D[h] = dot(go + h * d, o + h * d, d);

  for (int64_t n = 0; n < a.N; ++n) {
    if (!s.active[n]) continue;
    const int64_t nv = list_slot(s, n, RR, G);
    const int64_t* grid = s.grid + n * G;
    grid_dots(go, a.v, grid, G, heads, d, s);  // <dout_h, v_h(pixel)>
    T w[4];
    corner_weights(s.frac + 2 * n, w);
    for (int64_t h = 0; h < heads; ++h) {
      const T* qh = q + h * d;
      const T* goh = go + h * d;
      for (int64_t t = 0; t < nv; ++t) s.rows[t] = a.pos_v + (n * RR + s.cand[t]) * a.C + h * d;
      dot_many(goh, s.rows, nv, d, s.pos_dot);  // <dout_h, pos_v_c>
      zero(s.coef_a, G);  // d loss / d <q, k(pixel)>
      zero(s.coef_b, G);  // d loss / d v(pixel), per unit dout
      int64_t count = 0;
      for (int64_t t = 0; t < nv; ++t) {
        const int64_t r = s.cand[t], c = n * RR + r, g = s.corner[r];
        const T al = std::exp(s.logits[c * heads + h] - lse[h]);
        const T dalpha = bilinear(s.gdot + h, g, R, heads, w) + s.pos_dot[t];
        const T gs = scale * al * (dalpha - D[h]);  // d loss / d <q, k + pos_k>
        spread(s.coef_a, g, R, gs, w);
        spread(s.coef_b, g, R, al, w);
        s.rows[count] = a.pos_k + c * a.C + h * d;
        s.coefs[count++] = gs;
        axpy2(dpos_k + c * a.C + h * d, gs, qh, dpos_v + c * a.C + h * d, al, goh, d);
      }
      for (int64_t t = 0; t < s.used; ++t) {
        const int64_t g = s.idx[t];
        s.rows[count] = a.k + grid[g] + h * d;
        s.coefs[count++] = s.coef_a[g];
        if (Direct) {
          const int64_t off = grid[g] + h * d;
          axpy2(dk + off, s.coef_a[g], qh, dv + off, s.coef_b[g], goh, d);
        } else {
          rec.kc[(n * G + g) * heads + h] = s.coef_a[g];
          rec.vc[(n * G + g) * heads + h] = s.coef_b[g];
        }
      }
      axpy_many(dq + h * d, s.coefs, s.rows, count, d);  // dq = sum gs (k + pos_k)
    }
  }
}

// Phase B: applies the records of queries [q0, q1) to this thread's channel segments of dk and
// dv, in query order.
template <typename T>
void scatter_chunk(const WindowAttentionBackward<T>& a, char* records, size_t record_bytes,
                   int64_t q0, int64_t q1, const QueryScratch<T>& s) {
  const int64_t G = (a.R + 1) * (a.R + 1), heads = a.heads, C = a.C;
  for (int64_t qi = q0; qi < q1; ++qi) {
    Carver carve(records + size_t(qi - q0) * record_bytes);
    const Record<T> rec(carve, a.N, a.R, heads);
    const T* qrow = a.q + qi * C;
    const T* grow = a.grad_out + qi * C;
    for (int64_t e = 0; e < a.N * G; ++e) {
      const int64_t off = rec.koff[e];
      if (off < 0) continue;
      for (int64_t t = 0; t < s.segs; ++t) {
        const int64_t lo = s.seg_lo[t], h = s.seg_h[t];
        axpy2(a.grad_k + off + lo, rec.kc[e * heads + h], qrow + lo, a.grad_v + off + lo,
              rec.vc[e * heads + h], grow + lo, s.seg_len[t]);
      }
    }
  }
}

// dk/dv receive scattered updates from any query, so threads cannot write them directly. Three
// schemes, chosen by BackwardLayout (none uses atomics; all give bitwise reproducible results
// for a given thread count):
//  - direct (one thread): updates go straight to dk/dv.
//  - private_copies (while (threads - 1) copies of dk/dv fit kPrivateBudget): thread 0
//    updates dk/dv, every other thread its own copy, summed in thread order at the end.
//  - records (otherwise): chunks of queries; phase A (split over queries, the FLOP-heavy part)
//    computes dq and each query's dk/dv coefficients without writing dk/dv, then every thread
//    applies the whole chunk's coefficients to its own slice of channels (phase B), in query
//    order — so dk/dv are even bitwise the same for any thread count using this scheme.
// dpos_k/dpos_v (N*R*R*C, small) are accumulated per thread and summed in thread order.
// Static schedules: each thread always gets the same queries, so its partial sums are bitwise
// reproducible for a given thread count.
template <typename T>
void backward_impl(const WindowAttentionBackward<T>& a) {
  const BackwardLayout<T> L(a);
  const int64_t Q = a.B * a.M * a.H * a.W;
  const int64_t kv = Q * a.C, pos = a.N * a.R * a.R * a.C;
  char* const base = static_cast<char*>(a.scratch);
  char* const pos_base = base + size_t(a.num_threads) * L.query_bytes;
  char* const extra = pos_base + size_t(a.num_threads) * L.pos_bytes;  // private copies or records
  T* const copies = reinterpret_cast<T*>(extra);
  int team = 1;
#pragma omp parallel num_threads(a.num_threads)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    if (tid == 0) team = nt;
    Carver carve(base + size_t(tid) * L.query_bytes);
    QueryScratch<T> s(carve, a.N, a.R, a.heads);
    T* dpk = reinterpret_cast<T*>(pos_base + size_t(tid) * L.pos_bytes);
    T* dpv = dpk + pos;
    std::memset(dpk, 0, sizeof(T) * size_t(2 * pos));
    Record<T> none;
    if (L.scatter != Scatter::records) {
      T* dk = tid == 0 ? a.grad_k : copies + (int64_t(tid) - 1) * 2 * kv;
      T* dv = tid == 0 ? a.grad_v : dk + kv;
      std::memset(dk, 0, sizeof(T) * size_t(kv));
      std::memset(dv, 0, sizeof(T) * size_t(kv));
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t qi = 0; qi < Q; ++qi) backward_query<T, true>(a, qi, none, dk, dv, dpk, dpv, s);
      // implicit barrier; now add the private copies, in thread order
      if (nt > 1) {
#pragma omp for schedule(static)
        for (int64_t e = 0; e < kv; ++e) {
          T sk = a.grad_k[e], sv = a.grad_v[e];
          for (int t = 1; t < nt; ++t) {
            sk += copies[(int64_t(t) - 1) * 2 * kv + e];
            sv += copies[(int64_t(t) - 1) * 2 * kv + kv + e];
          }
          a.grad_k[e] = sk;
          a.grad_v[e] = sv;
        }
      }
    } else {
      // This thread's channels: whole 64-byte lines (no false sharing inside a row), cut at
      // head boundaries into segments.
      const int64_t line = 64 / int64_t(sizeof(T)), units = (a.C + line - 1) / line;
      const int64_t c0 = imin(a.C, units * tid / nt * line);
      const int64_t c1 = imin(a.C, units * (tid + 1) / nt * line);
      const int64_t d = a.C / a.heads;
      s.segs = 0;
      for (int64_t lo = c0; lo < c1;) {
        const int64_t h = lo / d, hi = imin(c1, (h + 1) * d);
        s.seg_h[s.segs] = h;
        s.seg_lo[s.segs] = lo;
        s.seg_len[s.segs++] = hi - lo;
        lo = hi;
      }
#pragma omp for schedule(static)
      for (int64_t e = 0; e < kv; ++e) a.grad_k[e] = a.grad_v[e] = T(0);
      for (int64_t q0 = 0; q0 < Q; q0 += L.chunk) {
        const int64_t q1 = imin(Q, q0 + L.chunk);
#pragma omp for schedule(static)
        for (int64_t qi = q0; qi < q1; ++qi) {
          Carver rc(extra + size_t(qi - q0) * L.record_bytes);
          Record<T> rec(rc, a.N, a.R, a.heads);
          backward_query<T, false>(a, qi, rec, nullptr, nullptr, dpk, dpv, s);
        }
        // implicit barrier: the chunk's records are complete
        if (s.segs) scatter_chunk<T>(a, extra, L.record_bytes, q0, q1, s);
        if (q1 < Q) {
#pragma omp barrier
        }  // the next chunk overwrites the records
      }
    }
  }
  // dpos: the per-thread partial sums, in thread order (N*R*R*C elements: not worth a region).
  for (int64_t e = 0; e < pos; ++e) {
    T sk = 0, sv = 0;
    for (int t = 0; t < team; ++t) {
      const T* p = reinterpret_cast<const T*>(pos_base + size_t(t) * L.pos_bytes);
      sk += p[e];
      sv += p[pos + e];
    }
    a.grad_pos_k[e] = sk;
    a.grad_pos_v[e] = sv;
  }
}

template <typename T>
size_t scratch_bytes(const WindowAttentionArgs<T>& a, bool backward) {
  if (backward) return BackwardLayout<T>(a).total;
  return size_t(a.num_threads) * QueryScratch<T>::bytes(a.N, a.R, a.heads);
}

}  // namespace

void window_attention_forward(const WindowAttentionForward<float>& a) { forward_impl(a); }
void window_attention_forward(const WindowAttentionForward<double>& a) { forward_impl(a); }
void window_attention_backward(const WindowAttentionBackward<float>& a) { backward_impl(a); }
void window_attention_backward(const WindowAttentionBackward<double>& a) { backward_impl(a); }
void window_attention_scratch_bytes(const WindowAttentionArgs<float>& a, bool backward,
                                    size_t* bytes) {
  *bytes = scratch_bytes(a, backward);
}
void window_attention_scratch_bytes(const WindowAttentionArgs<double>& a, bool backward,
                                    size_t* bytes) {
  *bytes = scratch_bytes(a, backward);
}

}  // namespace VSAD_ISA
}  // namespace vsad
