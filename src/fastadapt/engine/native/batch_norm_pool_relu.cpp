// Batch norm with batch statistics, then 2x2 max pooling (stride 2), then ReLU, fused for a CPU: the layer of the
// max-pool Conv-4 after each convolution. Channels-last (NHWC) tensors, float or double, one thread per call
// (fastadapt runs one task per core). Python side: fastadapt/native/__init__.py, which compiles this file once.
//
// Forward: y = (x - mean) * invstd * gamma + beta over N*H*W values per channel, out = relu(max over each 2x2
// window of y), and which of the four the maximum was (0..3 in scan order, the first of equal values, as torch's
// max_pool2d). An odd last row or column is left out of the windows but not of the statistics.
//
// Backward, with g = grad_out where out > 0 and dy = g placed at each window's maximum (0 elsewhere):
// grad_beta = sum(dy), grad_gamma = sum(dy * xhat), and
// grad_x = gamma * invstd * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M),   xhat = (x - mean) * invstd,
// which is A * x + B everywhere plus gamma * invstd * g at the maxima: the sums run over the pooled grid only.
#include <cmath>
#include <cstdint>
#include <cstdlib>

namespace {

struct Shape {
    int64_t n, c, h, w;
    int64_t pooled_h() const { return h / 2; }
    int64_t pooled_w() const { return w / 2; }
    int64_t values() const { return n * h * w; }  // per channel
    // Offsets, in values, of position (row, column) of image i and of pooled cell (row, column) of image i.
    int64_t at(int64_t i, int64_t row, int64_t column) const { return ((i * h + row) * w + column) * c; }
    int64_t pooled_at(int64_t i, int64_t row, int64_t column) const {
        return ((i * pooled_h() + row) * pooled_w() + column) * c;
    }
};

// Per-channel scratch space: two rows of double sums (zeroed) and `rows` rows of T, freed on leaving scope.
template <typename T>
struct Scratch {
    double* sums;
    T* values;
    Scratch(int64_t channels, int64_t rows)
        : sums(static_cast<double*>(std::calloc(2 * channels, sizeof(double)))),
          values(static_cast<T*>(std::malloc(rows * channels * sizeof(T)))) {}
    ~Scratch() {
        std::free(sums);
        std::free(values);
    }
    bool allocated() const { return sums && values; }
};

// Per-channel sums are taken per image in T (vectorised across channels), then added up in double.
template <typename T>
int forward(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias, Shape s, double eps,
            T* __restrict__ out, uint8_t* __restrict__ argmax, T* __restrict__ mean, T* __restrict__ invstd) {
    const int64_t C = s.c, M = s.values(), PH = s.pooled_h(), PW = s.pooled_w(), image = s.h * s.w;
    Scratch<T> scratch(C, 4);
    if (!scratch.allocated()) return 1;
    double* sum = scratch.sums;
    double* squares = scratch.sums + C;
    T* buffers = scratch.values;
    T* __restrict__ partial = buffers;
    T* __restrict__ centre = buffers + C;
    T* __restrict__ scale = buffers + 2 * C;
    T* __restrict__ shift = buffers + 3 * C;
    for (int64_t n = 0; n < s.n; ++n) {
        for (int64_t c = 0; c < C; ++c) partial[c] = 0;
        for (int64_t p = n * image; p < (n + 1) * image; ++p)
            for (int64_t c = 0; c < C; ++c) partial[c] += x[p * C + c];
        for (int64_t c = 0; c < C; ++c) sum[c] += partial[c];
    }
    for (int64_t c = 0; c < C; ++c) centre[c] = static_cast<T>(sum[c] / M);
    for (int64_t n = 0; n < s.n; ++n) {  // two passes, as torch: no cancellation when the mean is large
        for (int64_t c = 0; c < C; ++c) partial[c] = 0;
        for (int64_t p = n * image; p < (n + 1) * image; ++p)
            for (int64_t c = 0; c < C; ++c) {
                const T d = x[p * C + c] - centre[c];
                partial[c] += d * d;
            }
        for (int64_t c = 0; c < C; ++c) squares[c] += partial[c];
    }
    for (int64_t c = 0; c < C; ++c) {
        const double m = sum[c] / M, r = 1.0 / std::sqrt(squares[c] / M + eps);
        const double gamma = weight ? weight[c] : 1.0, beta = bias ? bias[c] : 0.0;
        mean[c] = static_cast<T>(m);
        invstd[c] = static_cast<T>(r);
        scale[c] = static_cast<T>(gamma * r);
        shift[c] = static_cast<T>(beta - m * gamma * r);
    }
    const int64_t row_stride = s.w * C;
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t ph = 0; ph < PH; ++ph)
            for (int64_t pw = 0; pw < PW; ++pw) {
                const T* __restrict__ x00 = x + s.at(n, 2 * ph, 2 * pw);
                const T* __restrict__ x10 = x00 + row_stride;
                const int64_t q = s.pooled_at(n, ph, pw);
                for (int64_t c = 0; c < C; ++c) {
                    const T y00 = x00[c] * scale[c] + shift[c], y01 = x00[C + c] * scale[c] + shift[c];
                    const T y10 = x10[c] * scale[c] + shift[c], y11 = x10[C + c] * scale[c] + shift[c];
                    // the first maximum in scan order, as torch's max_pool2d; 32-bit selects, which vectorise
                    const int32_t right_top = y01 > y00, right_bottom = y11 > y10;
                    const T top = right_top ? y01 : y00, bottom = right_bottom ? y11 : y10;
                    const int32_t lower = bottom > top;
                    const T best = lower ? bottom : top;
                    out[q + c] = best > T(0) ? best : T(0);
                    argmax[q + c] = static_cast<uint8_t>(lower * (2 + right_bottom) + (1 - lower) * right_top);
                }
            }
    return 0;
}

// grad_x = A x + B at one position, outside every pooling window
template <typename T>
void affine_only(const T* __restrict__ x, const T* __restrict__ a_x, const T* __restrict__ b, int64_t C, int64_t p,
                 T* __restrict__ grad_x) {
    for (int64_t c = 0; c < C; ++c) grad_x[p + c] = a_x[c] * x[p + c] + b[c];
}

template <typename T>
int backward(const T* __restrict__ grad_out, const T* __restrict__ out, const uint8_t* __restrict__ argmax,
             const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ mean,
             const T* __restrict__ invstd, Shape s, T* __restrict__ grad_x, T* __restrict__ grad_weight,
             T* __restrict__ grad_bias) {
    const int64_t C = s.c, M = s.values(), PH = s.pooled_h(), PW = s.pooled_w();
    Scratch<T> scratch(C, 5);
    if (!scratch.allocated()) return 1;
    double* sum_dy = scratch.sums;
    double* sum_dy_centred = scratch.sums + C;  // sum(dy * (x - mean))
    T* buffers = scratch.values;
    T* __restrict__ partial_dy = buffers;
    T* __restrict__ partial_centred = buffers + C;
    T* __restrict__ a_x = buffers + 2 * C;
    T* __restrict__ b = buffers + 3 * C;
    T* __restrict__ gamma_r = buffers + 4 * C;
    const int64_t row_stride = s.w * C;
    for (int64_t n = 0; n < s.n; ++n) {
        for (int64_t c = 0; c < C; ++c) partial_dy[c] = partial_centred[c] = 0;
        for (int64_t ph = 0; ph < PH; ++ph)
            for (int64_t pw = 0; pw < PW; ++pw) {
                const T* __restrict__ x00 = x + s.at(n, 2 * ph, 2 * pw);
                const T* __restrict__ x10 = x00 + row_stride;
                const int64_t q = s.pooled_at(n, ph, pw);
                for (int64_t c = 0; c < C; ++c) {
                    const int32_t k = argmax[q + c];  // all four loaded: selects, not branches, which vectorise
                    const T v00 = x00[c], v01 = x00[C + c], v10 = x10[c], v11 = x10[C + c];
                    const T top = (k & 1) ? v01 : v00, bottom = (k & 1) ? v11 : v10;
                    const T at = (k & 2) ? bottom : top;
                    const T upstream = grad_out[q + c];
                    const T g = out[q + c] > T(0) ? upstream : T(0);
                    partial_dy[c] += g;
                    partial_centred[c] += g * (at - mean[c]);
                }
            }
        for (int64_t c = 0; c < C; ++c) {
            sum_dy[c] += partial_dy[c];
            sum_dy_centred[c] += partial_centred[c];
        }
    }
    for (int64_t c = 0; c < C; ++c) {
        const double r = invstd[c], gr = (weight ? weight[c] : 1.0) * r;
        const double dy_xhat = r * sum_dy_centred[c];
        const double coefficient = -gr * r * dy_xhat / M;
        a_x[c] = static_cast<T>(coefficient);
        b[c] = static_cast<T>(-gr * sum_dy[c] / M - coefficient * mean[c]);
        gamma_r[c] = static_cast<T>(gr);
        if (grad_weight) grad_weight[c] = static_cast<T>(dy_xhat);
        if (grad_bias) grad_bias[c] = static_cast<T>(sum_dy[c]);
    }
    // grad_x = A x + B, plus gamma invstd g at each window's maximum: window by window, then the odd edges.
    for (int64_t n = 0; n < s.n; ++n) {
        for (int64_t ph = 0; ph < PH; ++ph) {
            for (int64_t pw = 0; pw < PW; ++pw) {
                const int64_t p00 = s.at(n, 2 * ph, 2 * pw), p10 = p00 + row_stride;
                const int64_t q = s.pooled_at(n, ph, pw);
                for (int64_t c = 0; c < C; ++c) {
                    const int32_t k = argmax[q + c];
                    const T upstream = grad_out[q + c], scaled = gamma_r[c] * upstream;
                    const T g = out[q + c] > T(0) ? scaled : T(0);
                    const T top = (k & 2) ? T(0) : g, bottom = (k & 2) ? g : T(0);  // bit tests vectorise
                    grad_x[p00 + c] = a_x[c] * x[p00 + c] + b[c] + ((k & 1) ? T(0) : top);
                    grad_x[p00 + C + c] = a_x[c] * x[p00 + C + c] + b[c] + ((k & 1) ? top : T(0));
                    grad_x[p10 + c] = a_x[c] * x[p10 + c] + b[c] + ((k & 1) ? T(0) : bottom);
                    grad_x[p10 + C + c] = a_x[c] * x[p10 + C + c] + b[c] + ((k & 1) ? bottom : T(0));
                }
            }
            if (s.w % 2)  // the last column, outside every window
                for (int64_t h = 2 * ph; h < 2 * ph + 2; ++h) affine_only(x, a_x, b, C, s.at(n, h, s.w - 1), grad_x);
        }
        if (s.h % 2)  // the last row
            for (int64_t w = 0; w < s.w; ++w) affine_only(x, a_x, b, C, s.at(n, s.h - 1, w), grad_x);
    }
    return 0;
}

}  // namespace

extern "C" {

int fastadapt_bn_pool_relu_forward_f32(const float* x, const float* weight, const float* bias, int64_t n, int64_t c,
                                       int64_t h, int64_t w, double eps, float* out, uint8_t* argmax, float* mean,
                                       float* invstd) {
    return forward<float>(x, weight, bias, {n, c, h, w}, eps, out, argmax, mean, invstd);
}

int fastadapt_bn_pool_relu_forward_f64(const double* x, const double* weight, const double* bias, int64_t n,
                                       int64_t c, int64_t h, int64_t w, double eps, double* out, uint8_t* argmax,
                                       double* mean, double* invstd) {
    return forward<double>(x, weight, bias, {n, c, h, w}, eps, out, argmax, mean, invstd);
}

int fastadapt_bn_pool_relu_backward_f32(const float* grad_out, const float* out, const uint8_t* argmax,
                                        const float* x, const float* weight, const float* mean, const float* invstd,
                                        int64_t n, int64_t c, int64_t h, int64_t w, float* grad_x,
                                        float* grad_weight, float* grad_bias) {
    return backward<float>(grad_out, out, argmax, x, weight, mean, invstd, {n, c, h, w}, grad_x, grad_weight,
                           grad_bias);
}

int fastadapt_bn_pool_relu_backward_f64(const double* grad_out, const double* out, const uint8_t* argmax,
                                        const double* x, const double* weight, const double* mean,
                                        const double* invstd, int64_t n, int64_t c, int64_t h, int64_t w,
                                        double* grad_x, double* grad_weight, double* grad_bias) {
    return backward<double>(grad_out, out, argmax, x, weight, mean, invstd, {n, c, h, w}, grad_x, grad_weight,
                            grad_bias);
}
}
