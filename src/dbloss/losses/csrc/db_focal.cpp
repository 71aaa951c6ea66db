// Fused CPU kernel of the Distribution-Balanced loss (dbloss.losses.fused).
//
// One call checks the labels, computes the re-balanced weight, the NTR shift / scale and the
// focal BCE, reduces the loss and writes dL/dz, so backward is a single multiply by the incoming
// gradient. The element-wise part uses ATen's vectorised math (at::vec, SLEEF), the row loop
// torch's intra-op thread pool (at::parallel_for). The equations are those of
// dbloss/losses/reference.py (the paper's); tests compare this kernel with it. A label outside
// {0, 1, ignore} raises ValueError; dbloss.losses.fast then reports it as dbloss.labels does.
//
// For row i (sample) and column k (class), y in {0, 1, ignore}:
//   d_i   = sum_{k : y_ik = 1} inv_freq_k
//   r_hat = alpha + sigmoid(beta * (inv_freq_k / d_i - mu))        (rebalance; d_i = 0: r -> +inf)
//   c     = 1 (y = 1) or -neg_scale (y = 0);   lw = 1 or 1 / neg_scale
//   t     = -(z + bias_k) * c   (= -s, the negated signed logit)
//   q     = sigmoid(t) = 1 - p_t;   nll = softplus(t) = -log p_t
//   loss  = scale * r_hat * lw * q^gamma * nll                     (0 where y = ignore)
//   dL/dz = -scale * r_hat * lw * c * q^gamma * (gamma * (1 - q) * nll + q)
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

using at::vec::Vectorized;

struct Params {
  double alpha, beta, mu, neg_scale, gamma, scale, ignore;
  bool rebalance;
};

// Pass 1 over row y (length C): d = sum of inv_freq over positives, the number of unmasked
// entries and the number of values outside {0, 1, ignore}.
template <typename T>
void row_stats(const T* y, const T* inv, int64_t C, T ignore_value, double& d, int64_t& valid, int64_t& bad) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  const V one(T(1)), zero(T(0)), ignore(ignore_value);
  V acc(T(0)), nvalid(T(0)), nbad(T(0));
  int64_t pad = 0;  // zero-filled lanes of the last load, counted as valid labels 0 below
  for (int64_t k = 0; k < C; k += W) {
    const int64_t n = std::min<int64_t>(W, C - k);
    pad += W - n;
    const V yv = V::loadu(y + k, n);
    const V is1 = yv == one, isig = yv == ignore;
    acc = acc + (V::loadu(inv + k, n) & is1);
    nvalid = nvalid + V::blendv(one, zero, isig);
    nbad = nbad + V::blendv(one, zero, is1 | isig | (yv == zero));
  }
  T buf[3][W];
  acc.store(buf[0]);
  nvalid.store(buf[1]);
  nbad.store(buf[2]);
  double sd = 0, sv = 0, sb = 0;
  for (int64_t j = 0; j < W; ++j) {
    sd += double(buf[0][j]);
    sv += double(buf[1][j]);
    sb += double(buf[2][j]);
  }
  d = sd;
  valid = int64_t(sv) - pad;
  bad = int64_t(sb);
}

// Pass 2 over one row. `w_row` is the row's constant re-balanced weight when d_i = 0 (NaN otherwise),
// `g_scale` multiplies the gradient (1 / count for "mean"). Returns the row's loss sum (double).
template <typename T>
double row_loss(const T* z, const T* y, const T* inv, const T* bias, int64_t C, T beta_rd, T w_row,
                const Params& p, bool has_ignore, T g_scale, T* loss_out, T* grad_out) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  const V one(T(1)), zero(T(0)), ignore(T(p.ignore));
  const V alpha(T(p.alpha)), beta_mu(T(p.beta * p.mu)), vbeta_rd(beta_rd), vw_row(w_row);
  const V neg_c(T(-p.neg_scale)), neg_lw(T(1.0 / p.neg_scale)), scale(T(p.scale)), gamma(T(p.gamma));
  const V vg_scale(g_scale);
  const bool const_w = !std::isnan(double(w_row));
  const bool gamma2 = p.gamma == 2.0, gamma0 = p.gamma == 0.0;
  V acc(T(0));
  double total = 0;
  T buf[W];
  for (int64_t k = 0; k < C; k += W) {
    const int64_t n = std::min<int64_t>(W, C - k);
    const V yv = V::loadu(y + k, n);
    V x = V::loadu(z + k, n);
    if (bias != nullptr) x = x + V::loadu(bias + k, n);
    const V pos = yv == one;
    V w;
    if (!p.rebalance) {
      w = one;
    } else if (const_w) {
      w = vw_row;
    } else {
      const V u = V::loadu(inv + k, n) * vbeta_rd - beta_mu;  // beta * (r - mu)
      w = alpha + one / (one + u.neg().exp());
    }
    const V c = V::blendv(neg_c, one, pos);
    w = w * V::blendv(neg_lw, one, pos) * scale;
    const V masked = has_ignore ? (yv == ignore) : zero;
    const V t = (x * c).neg();
    const V e = t.abs().neg().exp();
    const V u = one + e;
    const V r = one / u;
    const V q = V::blendv(e, one, t >= zero) * r;
    // log1p(e) = log(u) - ((u - 1) - e) / u: the first-order correction of u's rounding, exact
    // to about an ulp, one SLEEF log (several times faster than its log1p) and no extra division
    const V nll = at::vec::maximum(t, zero) + (u.log() - ((u - one) - e) * r);
    const V mod = gamma2 ? q * q : (gamma0 ? one : q.pow(gamma));
    V loss = w * mod * nll;
    if (has_ignore) loss = V::blendv(loss, zero, masked);  // 0 even for an infinite logit
    if (loss_out != nullptr) loss.store(loss_out + k, n);
    if (n == W) {
      acc = acc + loss;
    } else {
      loss.store(buf, n);
      for (int64_t j = 0; j < n; ++j) total += double(buf[j]);
    }
    if (grad_out != nullptr) {
      const V inner = gamma0 ? q : gamma * (one - q) * nll + q;
      V g = (w * c * mod * inner).neg() * vg_scale;
      if (has_ignore) g = V::blendv(g, zero, masked);
      g.store(grad_out + k, n);
    }
  }
  acc.store(buf);
  for (int64_t j = 0; j < W; ++j) total += double(buf[j]);
  return total;
}

// reduction: 0 "none", 1 "mean", 2 "sum".
// Returns (loss, grad): loss is (B, C) for "none", else 0-d; grad is dL/dz (B, C), already
// divided by the unmasked count for "mean", when need_grad, else undefined. A label outside
// {0, 1, ignore_index} raises ValueError (Python) naming its value, row and class.
std::tuple<at::Tensor, at::Tensor> db_focal_impl(const at::Tensor& z, const at::Tensor& y, const at::Tensor& inv_freq,
                                                 const c10::optional<at::Tensor>& bias, const Params& p,
                                                 int64_t ignore_index, int64_t reduction, bool need_grad) {
  TORCH_CHECK(z.device().is_cpu(), "db_focal: expected CPU tensors");
  TORCH_CHECK(z.dim() == 2 && y.sizes() == z.sizes(), "db_focal: expected z and y of the same shape (B, C)");
  TORCH_CHECK(z.is_contiguous() && y.is_contiguous() && inv_freq.is_contiguous(), "db_focal: expected contiguous");
  TORCH_CHECK(y.scalar_type() == z.scalar_type() && inv_freq.scalar_type() == z.scalar_type(),
              "db_focal: expected z, y and inv_freq of one dtype");
  TORCH_CHECK(inv_freq.dim() == 1 && inv_freq.size(0) == z.size(1), "db_focal: inv_freq must be (C,)");
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "db_focal: reduction must be 0, 1 or 2");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->is_contiguous() && bias->scalar_type() == z.scalar_type() && bias->dim() == 1 &&
                    bias->size(0) == z.size(1),
                "db_focal: bias must be a contiguous (C,) tensor of z's dtype");
  }
  const int64_t B = z.size(0), C = z.size(1);
  at::Tensor loss = reduction == 0 ? at::empty({B, C}, z.options()) : at::empty({}, z.options());
  at::Tensor grad = need_grad ? at::empty({B, C}, z.options()) : at::Tensor();
  std::vector<double> denom(B), row_sum(B);
  std::vector<int64_t> row_valid(B), row_bad(B);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));

  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "db_focal", [&] {
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* ip = inv_freq.const_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t ig = scalar_t(ignore_index);
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) row_stats(yp + i * C, ip, C, ig, denom[i], row_valid[i], row_bad[i]);
    });
    int64_t count = 0;
    for (int64_t i = 0; i < B; ++i) {
      count += row_valid[i];
      if (row_bad[i] == 0) continue;
      for (int64_t k = 0; k < C; ++k) {
        const scalar_t v = yp[i * C + k];
        TORCH_CHECK_VALUE(v == scalar_t(0) || v == scalar_t(1) || v == ig, "Expected `targets` values in {0, 1, ",
                          ignore_index, "} (ignore_index=", ignore_index, "), but got ", v, " at (row, class) = (",
                          i, ", ", k, ")");
      }
    }
    const bool has_ignore = count < B * C;
    const scalar_t g_scale = reduction == 1 ? scalar_t(1.0 / double(std::max<int64_t>(count, 1))) : scalar_t(1);
    scalar_t* lp = reduction == 0 ? loss.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gp = need_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
    // a row with no positive label: r -> +inf, so r_hat = alpha + 1 (alpha + 1/2 when beta = 0)
    const scalar_t w_empty = scalar_t(p.alpha + (p.beta > 0 ? 1.0 : 0.5));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const bool empty = denom[i] == 0.0;
        const scalar_t beta_rd = empty ? scalar_t(0) : scalar_t(p.beta / denom[i]);
        const scalar_t w_row = empty ? w_empty : std::numeric_limits<scalar_t>::quiet_NaN();
        row_sum[i] = row_loss<scalar_t>(zp + i * C, yp + i * C, ip, bp, C, beta_rd, w_row, p, has_ignore, g_scale,
                                        lp ? lp + i * C : nullptr, gp ? gp + i * C : nullptr);
      }
    });
    if (reduction != 0) {
      double total = 0;
      for (int64_t i = 0; i < B; ++i) total += row_sum[i];  // fixed order: deterministic
      if (reduction == 1) total /= double(std::max<int64_t>(count, 1));
      *loss.mutable_data_ptr<scalar_t>() = scalar_t(total);
    }
  });
  return {loss, grad};
}

// Autograd in C++ (no Python on the backward path): forward saves dL/dz, backward scales it.
class DBFocalFunction : public torch::autograd::Function<DBFocalFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& z, const at::Tensor& y,
                            const at::Tensor& inv_freq, const c10::optional<at::Tensor>& bias, Params p,
                            int64_t ignore_index, int64_t reduction, bool need_grad) {
    auto [loss, grad] = db_focal_impl(z, y, inv_freq, bias, p, ignore_index, reduction, need_grad);
    ctx->save_for_backward({grad});
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "the DB loss has a first derivative only: double backward (create_graph=True) is not supported");
    const at::Tensor grad = ctx->get_saved_variables()[0];
    const at::Tensor& go = grad_outputs[0];
    // loss.backward() on the reduced loss passes 1: return the saved gradient as is
    at::Tensor out = (go.dim() == 0 && go.item<double>() == 1.0) ? grad : at::mul(grad, go);
    return {out, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor db_focal_loss(const at::Tensor& z, const at::Tensor& y, const at::Tensor& inv_freq,
                         const c10::optional<at::Tensor>& bias, double alpha, double beta, double mu,
                         double neg_scale, double gamma, double scale, bool rebalance, int64_t ignore_index,
                         int64_t reduction) {
  const Params p{alpha, beta, mu, neg_scale, gamma, scale, double(ignore_index), rebalance};
  const bool need_grad = z.requires_grad() && at::GradMode::is_enabled();
  return DBFocalFunction::apply(z, y, inv_freq, bias, p, ignore_index, reduction, need_grad);
}

}  // namespace

TORCH_LIBRARY(dbloss, m) {
  m.def(
      "db_focal_loss(Tensor z, Tensor y, Tensor inv_freq, Tensor? bias, float alpha, float beta, float mu, "
      "float neg_scale, float gamma, float scale, bool rebalance, int ignore_index, int reduction) -> Tensor");
  m.impl("db_focal_loss", c10::DispatchKey::CompositeImplicitAutograd, TORCH_FN(db_focal_loss));
}
