// The vectorisable exp of kernels/vector_math.h against std::exp (computed in double).
// Its documented accuracy is ~1e-7 relative; 4e-7 (about 3 f32 ulps) leaves room for the
// rounding of the reduction while catching any wrong coefficient (errors >= 1e-5).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/vector_math.h"

namespace cst {
namespace {

TEST(VectorMath, ExpMatchesStdExpOverTheFloatRange) {
  double worst = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.0137f) {
    const double expected = std::exp(double(x));
    worst = std::max(worst, std::abs(double(vector_exp(x)) - expected) / expected);
  }
  EXPECT_LE(worst, 4e-7);
  std::printf("vector_exp: worst relative error %.2e over [-87, 88]\n", worst);
}

TEST(VectorMath, ExpEdgeCases) {
  EXPECT_EQ(vector_exp(0.0f), 1.0f);
  EXPECT_EQ(vector_exp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(vector_exp(-1000.0f), 0.0f);
  EXPECT_TRUE(std::isnan(vector_exp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(vector_max(1.0f, std::numeric_limits<float>::quiet_NaN()), 1.0f);
  EXPECT_EQ(select_f32(true, 2.0f, 3.0f), 2.0f);
  EXPECT_EQ(select_f32(false, 2.0f, 3.0f), 3.0f);
}

}  // namespace
}  // namespace cst
