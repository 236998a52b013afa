// MVAM window attention, fused forward and backward (DESIGN.md §3.1), compiled once per ISA.
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
#include <new>

#include "kernels/vec.h"
#include "window_attention.h"

namespace vsad {
namespace VSAD_ISA {
namespace {

// Per-thread buffers for one query. Plain malloc'd arrays: no std containers in per-ISA code
// (their out-of-line members would be shared across the ISA copies by the linker).
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

  QueryScratch(int64_t N, int64_t R, int64_t heads) {
    const int64_t G = (R + 1) * (R + 1), RR = R * R;
    grid = alloc<int64_t>(N * G);
    valid = alloc<unsigned char>(N * RR);
    active = alloc<unsigned char>(N);
    frac = alloc<T>(N * 2);
    logits = alloc<T>(N * RR * heads);
    gdot = alloc<T>(G * heads);
    coef_a = alloc<T>(G);
    coef_b = alloc<T>(G);
    idx = alloc<int64_t>(G);
    cand = alloc<int64_t>(RR);
    pos_dot = alloc<T>(RR);
    rows = alloc<const T*>(RR + G);
    coefs = alloc<T>(RR + G);
    row_terms = alloc<T>(heads);
    flat = alloc<int64_t>(N * RR);
    soft = alloc<T>(N * RR);
    cand_x = alloc<int64_t>(RR);
    cand_y = alloc<int64_t>(RR);
    corner = alloc<int64_t>(RR);
    for (int64_t r = 0; r < RR; ++r) {
      cand_x[r] = r % R;
      cand_y[r] = r / R;
      corner[r] = cand_y[r] * (R + 1) + cand_x[r];
    }
  }
  ~QueryScratch() {
    std::free(grid); std::free(valid); std::free(active); std::free(frac); std::free(logits);
    std::free(gdot); std::free(coef_a); std::free(coef_b); std::free(idx); std::free(cand);
    std::free(pos_dot); std::free(rows); std::free(coefs); std::free(row_terms);
    std::free(flat); std::free(soft); std::free(cand_x); std::free(cand_y); std::free(corner);
  }
  template <typename U>
  static U* alloc(int64_t n) {
    void* p = std::malloc(sizeof(U) * size_t(n > 1 ? n : 1));
    if (!p) throw std::bad_alloc();
    return static_cast<U*>(p);
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
#pragma omp parallel num_threads(a.num_threads)
  {
    QueryScratch<T> s(a.N, a.R, a.heads);
#pragma omp for schedule(dynamic, 1)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t y = row % a.H, i = (row / a.H) % a.M, b = row / (a.H * a.M);
      for (int64_t x = 0; x < a.W; ++x) forward_query<T>(a, b, i, y, x, s);
    }
  }
}

template <typename T>
void backward_query(const WindowAttentionBackward<T>& a, int64_t b, int64_t i, int64_t y,
                    int64_t x, T* dk, T* dv, T* dpos_k, T* dpos_v, QueryScratch<T>& s) {
  const int64_t R = a.R, RR = R * R, G = (R + 1) * (R + 1), heads = a.heads, d = a.C / heads;
  const int64_t qi = ((b * a.M + i) * a.H + y) * a.W + x;
  const T* q = a.q + qi * a.C;
  const T* go = a.grad_out + qi * a.C;
  const T* o = a.out + qi * a.C;
  const T* lse = a.lse + qi * heads;
  T* dq = a.grad_q + qi * a.C;
  std::memset(dq, 0, sizeof(T) * size_t(a.C));
  if (!build_geometry<T>(a, b, i, y, x, s)) return;
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
        axpy(dpos_k + c * a.C + h * d, gs, qh, d);
        axpy(dpos_v + c * a.C + h * d, al, goh, d);
      }
      for (int64_t t = 0; t < s.used; ++t) {
        const int64_t off = grid[s.idx[t]] + h * d;
        const T ck = s.coef_a[s.idx[t]], cv = s.coef_b[s.idx[t]];
        s.rows[count] = a.k + off;
        s.coefs[count++] = ck;
        axpy(dk + off, ck, qh, d);
        axpy(dv + off, cv, goh, d);
      }
      axpy_many(dq + h * d, s.coefs, s.rows, count, d);  // dq = sum gs (k + pos_k)
    }
  }
}

template <typename T>
void backward_impl(const WindowAttentionBackward<T>& a) {
  const int64_t rows = a.B * a.M * a.H;
  const int64_t kv = a.B * a.M * a.H * a.W * a.C;
  const int64_t pos = a.N * a.R * a.R * a.C;
  T* pos_base = a.scratch + (int64_t(a.num_threads) - 1) * 2 * kv;
#pragma omp parallel num_threads(a.num_threads)
  {
    const int tid = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    // dk/dv receive scattered updates from any query: thread 0 accumulates into the outputs,
    // every other thread into a private copy summed at the end (no atomics, no races).
    T* dk = tid == 0 ? a.grad_k : a.scratch + (int64_t(tid) - 1) * 2 * kv;
    T* dv = tid == 0 ? a.grad_v : dk + kv;
    T* dpk = pos_base + int64_t(tid) * 2 * pos;
    T* dpv = dpk + pos;
    std::memset(dk, 0, sizeof(T) * size_t(kv));
    std::memset(dv, 0, sizeof(T) * size_t(kv));
    std::memset(dpk, 0, sizeof(T) * size_t(2 * pos));
#pragma omp barrier
    {
      QueryScratch<T> s(a.N, a.R, a.heads);
      // Static schedule: each thread always gets the same rows, so the per-thread partial sums
      // and hence dk, dv, dpos_* are bitwise reproducible for a given thread count.
#pragma omp for schedule(static)
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t y = row % a.H, i = (row / a.H) % a.M, b = row / (a.H * a.M);
        for (int64_t x = 0; x < a.W; ++x) backward_query<T>(a, b, i, y, x, dk, dv, dpk, dpv, s);
      }
    }
    // Implicit barrier above; now reduce the private copies.
    if (nt > 1) {
#pragma omp for schedule(static)
      for (int64_t e = 0; e < kv; ++e) {
        T sk = a.grad_k[e], sv = a.grad_v[e];
        for (int t = 1; t < nt; ++t) {
          sk += a.scratch[(int64_t(t) - 1) * 2 * kv + e];
          sv += a.scratch[(int64_t(t) - 1) * 2 * kv + kv + e];
        }
        a.grad_k[e] = sk;
        a.grad_v[e] = sv;
      }
    }
#pragma omp for schedule(static)
    for (int64_t e = 0; e < pos; ++e) {
      T sk = 0, sv = 0;
      for (int t = 0; t < nt; ++t) {
        sk += pos_base[int64_t(t) * 2 * pos + e];
        sv += pos_base[int64_t(t) * 2 * pos + pos + e];
      }
      a.grad_pos_k[e] = sk;
      a.grad_pos_v[e] = sv;
    }
  }
}

}  // namespace

void window_attention_forward(const WindowAttentionForward<float>& a) { forward_impl(a); }
void window_attention_forward(const WindowAttentionForward<double>& a) { forward_impl(a); }
void window_attention_backward(const WindowAttentionBackward<float>& a) { backward_impl(a); }
void window_attention_backward(const WindowAttentionBackward<double>& a) { backward_impl(a); }

}  // namespace VSAD_ISA
}  // namespace vsad
