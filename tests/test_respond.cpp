// train/respond: the tokens that end a chat model's answer.
#include <gtest/gtest.h>

#include <vector>

#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "train/respond.h"

namespace cst {
namespace {

const std::string kChatmlTokenizer = CST_SOURCE_DIR "/tests/fixtures/tokenizer/chatml";

// The OpenHermes-style tokenizer: EOS is <|im_end|> (32000), </s> is 2.
TEST(Respond, StopTokensAreEosConfigEosIdsAndEndOfTurnMarkers) {
  const Tokenizer tokenizer = Tokenizer::from_directory(kChatmlTokenizer);
  ASSERT_EQ(tokenizer.eos_id(), 32000);
  // A config listing several EOS ids (as Llama 3.1's does) adds each one, once.
  EXPECT_EQ(chat_stop_tokens(tokenizer, chat_template_by_name("chatml"), {2, 32000, 7}),
            (std::vector<int32_t>{32000, 2, 7}));
  // Zephyr's end-of-turn markers: </s> (already a config EOS) and <|user|> (not one token here).
  EXPECT_EQ(chat_stop_tokens(tokenizer, chat_template_by_name("zephyr"), {2}), (std::vector<int32_t>{32000, 2}));
  EXPECT_EQ(chat_stop_tokens(tokenizer, chat_template_by_name("mistral"), {}), (std::vector<int32_t>{32000, 2}));
  EXPECT_EQ(chat_stop_tokens(tokenizer, chat_template_by_name("plain"), {}), (std::vector<int32_t>{32000}));
}

}  // namespace
}  // namespace cst
