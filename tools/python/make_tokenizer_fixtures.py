#!/usr/bin/env python3
# Golden fixtures for data/tokenizer and data/chat_template.
#
# Rerun from the repository root (needs transformers 4.42.4, sentencepiece, mistral-common):
#     python3 tools/python/make_tokenizer_fixtures.py
# It rewrites everything under tests/fixtures/tokenizer/:
#   chatml/                      OpenHermes-2.5-style tokenizer directory built from the Mistral v1
#                                tokenizer.model shipped by mistral-common (legacy = true)
#   chatml_legacy_false/         same model, legacy = false, plus two extra added tokens that
#                                exercise the lstrip/rstrip and normalized flags
#   chatml_added_tokens_json/    same model, old-style config without added_tokens_decoder, so
#                                transformers reads added_tokens.json (<|im_start|> becomes a
#                                "normalized" token that is matched after the legacy normalizer)
#   encode_golden.json           per variant: corpus texts, AutoTokenizer ids, decode() strings
#   dataset_hashes.txt           FNV-1a hashes of the ids of every real dataset text (see below)
#   chat_templates/<name>.jinja  the real jinja sources of the built-in chat templates, and of the
#                                other llama3.1 family members (LLAMA31_FAMILY)
#   chat_templates.json          strings rendered by transformers' apply_chat_template: single-turn
#                                [system, user] triples and conversations of several user turns
#                                (--chat_templates_only rewrites this and chat_templates/ alone)
#   json/                        tokenizers given as tokenizer.json, converted by LlamaTokenizerFast
#                                from the demo's small sentencepiece model (tests/fixtures/demo/
#                                tokenizer/tokenizer.model, copied to json/tokenizer.model), and
#                                json/golden.json: per variant its files, AutoTokenizer ids on the
#                                corpus of encode_golden.json, and decodes (see json_variants()).
#   byte_level/, sentencepiece_special_tokens.json   make_byte_level_tokenizer_fixtures.py, run last
#
# Hash of an id sequence (must match tests/test_tokenizer.cpp): 64-bit FNV-1a over the ids, each
# id fed as 4 little-endian bytes of its int32 value; offset basis 0xcbf29ce484222325,
# prime 0x100000001b3. Written as 16 lowercase hex digits.
import json
import os
import random
import shutil
import sys
import tempfile

import mistral_common
import transformers
from transformers import AutoTokenizer, LlamaTokenizer, LlamaTokenizerFast

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(REPO, "tests", "fixtures", "tokenizer")
DATASET = os.path.join(REPO, "..", "shared", "data", "configurable-system-prompt-multitask.json")
MISTRAL_V1_MODEL = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
DEMO_MODEL = os.path.join(REPO, "tests", "fixtures", "demo", "tokenizer", "tokenizer.model")
JSON_OUT = os.path.join(OUT, "json")

# --- Chat templates: the sources as published in each model's tokenizer_config.json. ----------------

CHAT_TEMPLATES = {
    # teknium/OpenHermes-2.5-Mistral-7B
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    # upstage/SOLAR-10.7B-Instruct-v1.0
    "solar": "{% for message in messages %}{% if message['role'] == 'system' %}{% if message['content']%}{{'### System:\n' + message['content']+'\n\n'}}{% endif %}{% elif message['role'] == 'user' %}{{'### User:\n' + message['content']+'\n\n'}}{% elif message['role'] == 'assistant' %}{{'### Assistant:\n'  + message['content']}}{% endif %}{% if loop.last and add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}{% endfor %}",
    # meta-llama/Llama-2-7b-chat-hf
    "llama2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    # mistralai/Mistral-7B-Instruct-v0.1
    "mistral": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
    # mistralai/Mistral-7B-Instruct-v0.2 (the template with a system role its tokenizer_config.json has
    # carried since 2024; the first one was the v0.1 template above)
    "mistral_v2": "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n",
    # Mistral's "v3" template with tools (Mistral-Large-Instruct-2407 and the v3-tokenizer family);
    # the system message goes into the last user turn
    "mistral_v3": "{%- if messages[0][\"role\"] == \"system\" %}\n    {%- set system_message = messages[0][\"content\"] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n{%- set user_messages = loop_messages | selectattr(\"role\", \"equalto\", \"user\") | list %}\n\n{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}\n{%- set ns = namespace() %}\n{%- set ns.index = 0 %}\n{%- for message in loop_messages %}\n    {%- if not (message.role == \"tool\" or message.role == \"tool_results\" or (message.tool_calls is defined and message.tool_calls is not none)) %}\n        {%- if (message[\"role\"] == \"user\") != (ns.index % 2 == 0) %}\n            {{- raise_exception(\"After the optional system message, conversation roles must alternate user/assistant/user/assistant/...\") }}\n        {%- endif %}\n        {%- set ns.index = ns.index + 1 %}\n    {%- endif %}\n{%- endfor %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message[\"role\"] == \"user\" %}\n        {%- if tools is not none and (message == user_messages[-1]) %}\n            {{- \"[AVAILABLE_TOOLS] [\" }}\n            {%- for tool in tools %}\n                {%- set tool = tool.function %}\n                {{- '{\"type\": \"function\", \"function\": {' }}\n                {%- for key, val in tool.items() if key != \"return\" %}\n                    {%- if val is string %}\n                        {{- '\"' + key + '\": \"' + val + '\"' }}\n                    {%- else %}\n                        {{- '\"' + key + '\": ' + val|tojson }}\n                    {%- endif %}\n                    {%- if not loop.last %}\n                        {{- \", \" }}\n                    {%- endif %}\n                {%- endfor %}\n                {{- \"}}\" }}\n                {%- if not loop.last %}\n                    {{- \", \" }}\n                {%- else %}\n                    {{- \"]\" }}\n                {%- endif %}\n            {%- endfor %}\n            {{- \"[/AVAILABLE_TOOLS]\" }}\n            {%- endif %}\n        {%- if loop.last and system_message is defined %}\n            {{- \"[INST] \" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n        {%- else %}\n            {{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}\n        {%- endif %}\n    {%- elif message.tool_calls is defined and message.tool_calls is not none %}\n        {{- \"[TOOL_CALLS] [\" }}\n        {%- for tool_call in message.tool_calls %}\n            {%- set out = tool_call.function|tojson %}\n            {{- out[:-1] }}\n            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}\n                {{- raise_exception(\"Tool call IDs should be alphanumeric strings with length 9!\") }}\n            {%- endif %}\n            {{- ', \"id\": \"' + tool_call.id + '\"}' }}\n            {%- if not loop.last %}\n                {{- \", \" }}\n            {%- else %}\n                {{- \"]\" + eos_token }}\n            {%- endif %}\n        {%- endfor %}\n    {%- elif message[\"role\"] == \"assistant\" %}\n        {{- \" \" + message[\"content\"]|trim + eos_token}}\n    {%- elif message[\"role\"] == \"tool_results\" or message[\"role\"] == \"tool\" %}\n        {%- if message.content is defined and message.content.content is defined %}\n            {%- set content = message.content.content %}\n        {%- else %}\n            {%- set content = message.content %}\n        {%- endif %}\n        {{- '[TOOL_RESULTS] {\"content\": ' + content|string + \", \" }}\n        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}\n            {{- raise_exception(\"Tool call IDs should be alphanumeric strings with length 9!\") }}\n        {%- endif %}\n        {{- '\"call_id\": \"' + message.tool_call_id + '\"}[/TOOL_RESULTS]' }}\n    {%- else %}\n        {{- raise_exception(\"Only user and assistant roles are supported, with the exception of an initial optional system message!\") }}\n    {%- endif %}\n{%- endfor %}\n",
    # meta-llama/Meta-Llama-3-8B-Instruct (the template its tokenizer_config.json has carried since
    # May 2024; the first one added the generation prompt unconditionally)
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    # meta-llama/Llama-3.1-8B-Instruct (Llama-3.3-70B-Instruct publishes the same source)
    "llama3.1": r'''{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
''',
    # HuggingFaceH4/zephyr-7b-beta
    "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
}

# Other members of the llama3.1 family (rendered like "llama3.1" when no tools are given):
LLAMA31_FAMILY = {
    # meta-llama/Llama-3.2-3B-Instruct (and the other 3.2 Instruct models): the date from
    # strftime_now when the renderer has it (not in transformers 4.42.4), else "26 Jul 2024"
    "llama3.2": r'''{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
''',
}

# --- Tokenizer directories. ------------------------------------------------------------------------


def added_token(content, special, lstrip=False, rstrip=False, normalized=False):
    return {"content": content, "lstrip": lstrip, "normalized": normalized, "rstrip": rstrip,
            "single_word": False, "special": special}


def base_added_tokens_decoder():
    return {
        "0": added_token("<unk>", True),
        "1": added_token("<s>", True),
        "2": added_token("</s>", True),
        "32000": added_token("<|im_end|>", True),
        "32001": added_token("<|im_start|>", True),
    }


def openhermes_config(legacy):
    # The fields of teknium/OpenHermes-2.5-Mistral-7B's tokenizer_config.json that matter.
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": base_added_tokens_decoder(),
        "additional_special_tokens": [],
        "bos_token": "<s>",
        "chat_template": CHAT_TEMPLATES["chatml"],
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "legacy": legacy,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer",
        "trust_remote_code": False,
        "unk_token": "<unk>",
        "use_default_system_prompt": True,
        "use_fast": True,
    }


SPECIAL_TOKENS_MAP = {"bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>"}


def variant_files():
    """name -> {file name: json object}; tokenizer.model is shared from chatml/."""
    legacy_false = openhermes_config(legacy=False)
    legacy_false["added_tokens_decoder"]["32002"] = added_token("<|tool|>", False, lstrip=True, rstrip=True)
    legacy_false["added_tokens_decoder"]["32003"] = added_token("[[note]]", False, normalized=True)
    old_style = openhermes_config(legacy=None)
    del old_style["added_tokens_decoder"]
    del old_style["legacy"]
    return {
        "chatml": {
            "tokenizer_config.json": openhermes_config(legacy=True),
            "added_tokens.json": {"<|im_end|>": 32000, "<|im_start|>": 32001},
            "special_tokens_map.json": SPECIAL_TOKENS_MAP,
        },
        "chatml_legacy_false": {
            "tokenizer_config.json": legacy_false,
            "added_tokens.json": {"<|im_end|>": 32000, "<|im_start|>": 32001, "<|tool|>": 32002, "[[note]]": 32003},
            "special_tokens_map.json": SPECIAL_TOKENS_MAP,
        },
        "chatml_added_tokens_json": {
            "tokenizer_config.json": old_style,
            "added_tokens.json": {"<|im_end|>": 32000, "<|im_start|>": 32001},
            "special_tokens_map.json": SPECIAL_TOKENS_MAP,
        },
    }


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def write_variants():
    os.makedirs(os.path.join(OUT, "chatml"), exist_ok=True)
    shutil.copyfile(MISTRAL_V1_MODEL, os.path.join(OUT, "chatml", "tokenizer.model"))
    for name, files in variant_files().items():
        os.makedirs(os.path.join(OUT, name), exist_ok=True)
        for file_name, obj in files.items():
            write_json(os.path.join(OUT, name, file_name), obj)


def load_variant(name, tokenizer_class=AutoTokenizer, **kwargs):
    """Loads a variant the way the C++ test assembles it: its files plus chatml/tokenizer.model."""
    with tempfile.TemporaryDirectory() as directory:
        shutil.copyfile(os.path.join(OUT, "chatml", "tokenizer.model"), os.path.join(directory, "tokenizer.model"))
        for file_name in variant_files()[name]:
            shutil.copyfile(os.path.join(OUT, name, file_name), os.path.join(directory, file_name))
        return tokenizer_class.from_pretrained(directory, **kwargs)

# --- Corpus. ---------------------------------------------------------------------------------------


HAND_WRITTEN = [
    "", " ", "  ", "   ", "\n", "\n\n", "\n\n\n\n", "\t", "\t\t", " \t \n ", "\r\n", "\r\n\r\n",
    "Hello world", " Hello world", "Hello world ", "  Hello  world  ", "Hello\nworld", "Hello\n\nworld\n",
    "a", " a", "a ", "I", "I'm", "don't", "The quick brown fox jumps over the lazy dog.",
    "café naïve résumé façade jalapeño", "Ça va? Où est l'hôtel?", "Straße Größe Übermut",
    "ÀÁÂÃÄÅ àáâãäå", "e\u0301 (combining acute)", "ﬁ ligature", "Ångström",
    "中文测试", "我爱自然语言处理。", "日本語のテキストです。", "カタカナ ひらがな", "한국어 텍스트",
    "Привет, мир!", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก",
    "ሰላም ልዑል", "Ꭰ Ꭱ Ꭲ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙", "𓀀𓀁𓀂", "\u0378\u0379", "\ue000 private use",
    "👍", "👍🏽", "🤖🎉🔥", "👨\u200d👩\u200d👧\u200d👦", "🇫🇷🇯🇵", "emoji in text 😀 here", "❤️",
    "\u0000", "nul\u0000inside", "\u0007bell", "\u007f", "\u200b zero width", "\u00a0nbsp\u00a0",
    "\u3000ideographic space", "\u2028line separator",
    "▁", "▁▁", "▁ x", "x▁y", " ▁", "<0x41>", "<0x0A>", "<0xZZ>",
    "1234567890", "3.14159", "2024-01-01T12:00:00Z", "1,000,000", "-42", "0x1F", "12 345 678",
    "<|im_start|>user\nhi<|im_end|>\n", "<|im_start|><|im_end|>", "x<|im_start|>y", "word<|im_end|>word",
    "<|im_start|> spaced", " <|im_end|> ", "<|im_start|>\n", "<|im_start|>system\nBe good.<|im_end|>\n",
    "<|im_start|>assistant\n", "<|im_start|>", "<|im_end|>", "<|im_start|><|im_start|>", "<|im_start",
    "<|im_end|>>", "<<|im_end|>", "|im_start|", "<|im_start |>",
    "<s>", "</s>", "<s>hello</s>", " <s> ", "<unk>", "<s><s></s>", "text</s>", "</s>text", "<s >",
    "<|tool|>", "a <|tool|> b", "a  <|tool|>  b", "\n<|tool|>\n", "x<|tool|>y", "<|tool|><|tool|>",
    "[[note]]", "a [[note]] b", "a[[note]]b", " [[note]]", "[[note]] ", "<|im_start|>[[note]]",
    "def f(x):\n    return x * 2\n", "if (a && b) { c(); }", "    indented four", "\tindented tab",
    "SELECT * FROM t WHERE a = 'b';", "https://example.com/path?q=1&r=2", "user@example.com",
    "!!!???...", "\"quoted\" 'single'", "(paren) [bracket] {brace}", "#hashtag @mention", "~`^|\\",
]


def random_corpus(count, seed=1234):
    fragments = [
        "hello", "world", "The", " the", "tokenizer", "Mistral", "ChatML", "system", "user", "assistant",
        " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", ".", ",", "!", "?", "'", '"', "-", ":", ";",
        "0", "7", "42", "1999", "3.5", "é", "ñ", "ü", "中", "文", "の", "한", "ж", "ß", "😀", "🚀", "👍🏾",
        "\u0301", "\u200d", "▁", "<", ">", "|", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<unk>",
        "<|tool|>", "[[note]]", "im_start", "<0x41>", "𝔘", "\u00a0", "\u3000", "ሰ",
    ]
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        parts = [rng.choice(fragments) for _ in range(rng.randint(1, 20))]
        texts.append("".join(parts))
    return texts


def space_runs():
    texts = []
    for n in range(1, 21):
        texts.append(" " * n)
        texts.append("a" + " " * n + "b")
        texts.append("\n" * n)
        texts.append("x" + "\t" * (n % 5 + 1) + "y" + " " * n)
    return texts


def synthetic_corpus():
    return HAND_WRITTEN + space_runs() + random_corpus(300)


def random_id_sequences(vocab_size, count, seed=99, piece_count=32000):
    """Arbitrary id sequences for decode(): byte pieces, specials and added tokens mixed."""
    rng = random.Random(seed)
    pools = [list(range(0, 300)), list(range(vocab_size - 6, vocab_size)), list(range(300, piece_count))]
    sequences = []
    for _ in range(count):
        sequence = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 12))]
        sequences.append(sequence)
    return sequences

# --- Golden data. ----------------------------------------------------------------------------------


def fnv1a64(ids):
    h = 0xCBF29CE484222325
    for token_id in ids:
        for byte in int(token_id).to_bytes(4, "little", signed=True):
            h ^= byte
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return format(h, "016x")


def encode_golden():
    texts = synthetic_corpus()
    golden = {"transformers": transformers.__version__, "texts": texts, "variants": {}}
    for name in variant_files():
        tokenizer = load_variant(name)
        assert type(tokenizer).__name__ == "LlamaTokenizerFast", type(tokenizer)
        slow = load_variant(name, LlamaTokenizer)
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        slow_differs = sum(1 for t, i in zip(texts, ids) if slow(t, add_special_tokens=False)["input_ids"] != i)
        sequences = ids + random_id_sequences(len(tokenizer), 120)
        golden["variants"][name] = {
            "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer),
            "bos_id": tokenizer.bos_token_id,
            "eos_id": tokenizer.eos_token_id,
            "pad_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            "added_special_ids": sorted(i for i, t in tokenizer.added_tokens_decoder.items() if t.special),
            "texts_where_slow_tokenizer_differs": slow_differs,
            "ids": ids,
            "decode_ids": sequences,
            "decoded": [tokenizer.decode(s) for s in sequences],
            "decoded_skip_special": [tokenizer.decode(s, skip_special_tokens=True) for s in sequences],
        }
        print(f"{name}: {len(texts)} texts, slow tokenizer differs on {slow_differs}", file=sys.stderr)
    with open(os.path.join(OUT, "encode_golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, separators=(",", ":"))


def dataset_hashes():
    """One line per dataset row: hashes of system, prompt, chosen, rejected, then the seed's ChatML
    rendering of the prompt ([system, user]) and of the chosen and rejected answer turns."""
    if not os.path.exists(DATASET):
        print(f"dataset {DATASET} absent: dataset_hashes.txt not regenerated", file=sys.stderr)
        return
    tokenizer = load_variant("chatml")
    with open(DATASET, encoding="utf-8") as f:
        rows = json.load(f)
    lines = ["# system prompt chosen rejected chatml_prompt chatml_chosen chatml_rejected"]
    for row in rows:
        prompt = tokenizer.apply_chat_template(
            [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["prompt"]}],
            tokenize=False, add_generation_prompt=False)
        answers = [tokenizer.apply_chat_template([{"role": "assistant", "content": row[k]}], tokenize=False)
                   for k in ("chosen", "rejected")]
        texts = [row["system"], row["prompt"], row["chosen"], row["rejected"], prompt] + answers
        lines.append(" ".join(fnv1a64(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts))
    with open(os.path.join(OUT, "dataset_hashes.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")

# --- tokenizer.json without tokenizer.model. --------------------------------------------------------
#
# Variants (files are paths under json/; every directory is loaded exactly as listed):
#   legacy      tokenizer.json of the legacy conversion (normalizer Prepend + Replace) and an
#               OpenHermes-style tokenizer_config.json; no tokenizer.model, so transformers has only
#               the tokenizer.json vocabulary and merges list to go by
#   metaspace   legacy = false conversion (Metaspace pre-tokenizer, prepend_scheme first), with the
#               lstrip/rstrip and normalized added tokens of chatml_legacy_false
#   json_only   the legacy tokenizer.json alone (no tokenizer_config.json), loaded with
#               LlamaTokenizerFast since AutoTokenizer needs a config to pick the class
#   disagrees   tokenizer.model + a tokenizer.json whose merges list is reversed and repeats one
#               merge at the end (the last line of a repeated merge sets its rank): AutoTokenizer
#               follows tokenizer.json, so the ids differ from tokenizer.model's on many texts
#   rebuilt     the same two files, but tokenizer_config.json sets add_prefix_space (false, legacy
#               true): LlamaTokenizerFast then converts tokenizer.model again and ignores tokenizer.json


def demo_config(legacy, extra_tokens=()):
    config = openhermes_config(legacy)
    decoder = {"0": added_token("<unk>", True), "1": added_token("<s>", True), "2": added_token("</s>", True),
               "512": added_token("<|im_end|>", True), "513": added_token("<|im_start|>", True)}
    for token_id, token in extra_tokens:
        decoder[str(token_id)] = token
    config["added_tokens_decoder"] = decoder
    return config


def as_published(config):
    # The Hub's Llama/Mistral configs carry "add_prefix_space": null, which leaves tokenizer.json in
    # charge (a value would make LlamaTokenizerFast convert tokenizer.model again). The conversions
    # above run without the key: null would turn the "▁" prefix off in the converter.
    return dict(config, add_prefix_space=None)


def converted_tokenizer_json(config):
    """tokenizer.json written by LlamaTokenizerFast converted from the demo's sentencepiece model."""
    with tempfile.TemporaryDirectory() as source, tempfile.TemporaryDirectory() as saved:
        shutil.copyfile(DEMO_MODEL, os.path.join(source, "tokenizer.model"))
        write_json(os.path.join(source, "tokenizer_config.json"), config)
        LlamaTokenizerFast.from_pretrained(source, from_slow=True).save_pretrained(saved)
        with open(os.path.join(saved, "tokenizer.json"), encoding="utf-8") as f:
            return json.load(f)


def disagreeing(tokenizer_json):
    changed = json.loads(json.dumps(tokenizer_json))
    merges = changed["model"]["merges"][::-1]
    changed["model"]["merges"] = merges + [merges[len(merges) // 2]]
    return changed


def json_variants():
    """name -> (loader, {file name in the tokenizer directory: path under json/})."""
    return {
        "legacy": ("AutoTokenizer", {"tokenizer.json": "legacy/tokenizer.json",
                                     "tokenizer_config.json": "legacy/tokenizer_config.json"}),
        "metaspace": ("AutoTokenizer", {"tokenizer.json": "metaspace/tokenizer.json",
                                        "tokenizer_config.json": "metaspace/tokenizer_config.json"}),
        "json_only": ("LlamaTokenizerFast", {"tokenizer.json": "legacy/tokenizer.json"}),
        "disagrees": ("AutoTokenizer", {"tokenizer.model": "tokenizer.model",
                                        "tokenizer.json": "disagrees/tokenizer.json",
                                        "tokenizer_config.json": "legacy/tokenizer_config.json"}),
        "rebuilt": ("AutoTokenizer", {"tokenizer.model": "tokenizer.model",
                                      "tokenizer.json": "disagrees/tokenizer.json",
                                      "tokenizer_config.json": "rebuilt/tokenizer_config.json"}),
    }


def write_json_variant_files():
    os.makedirs(JSON_OUT, exist_ok=True)
    shutil.copyfile(DEMO_MODEL, os.path.join(JSON_OUT, "tokenizer.model"))
    legacy_config = demo_config(legacy=True)
    metaspace_config = demo_config(legacy=False, extra_tokens=[
        (514, added_token("<|tool|>", False, lstrip=True, rstrip=True)),
        (515, added_token("[[note]]", False, normalized=True))])
    rebuilt_config = demo_config(legacy=True)
    rebuilt_config["add_prefix_space"] = False
    legacy_json = converted_tokenizer_json(legacy_config)
    files = {
        "legacy/tokenizer.json": legacy_json,
        "legacy/tokenizer_config.json": as_published(legacy_config),
        "metaspace/tokenizer.json": converted_tokenizer_json(metaspace_config),
        "metaspace/tokenizer_config.json": as_published(metaspace_config),
        "disagrees/tokenizer.json": disagreeing(legacy_json),
        "rebuilt/tokenizer_config.json": rebuilt_config,
    }
    for path, obj in files.items():
        os.makedirs(os.path.dirname(os.path.join(JSON_OUT, path)), exist_ok=True)
        with open(os.path.join(JSON_OUT, path), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))


def load_json_variant(name):
    return load_json_files(*json_variants()[name])


def load_json_files(loader, files):
    with tempfile.TemporaryDirectory() as directory:
        for file_name, path in files.items():
            shutil.copyfile(os.path.join(JSON_OUT, path), os.path.join(directory, file_name))
        tokenizer_class = AutoTokenizer if loader == "AutoTokenizer" else LlamaTokenizerFast
        return tokenizer_class.from_pretrained(directory)


def sentencepiece_ids(texts):
    """Ids of the demo's tokenizer.model alone, to show where a tokenizer.json disagrees with it."""
    with tempfile.TemporaryDirectory() as directory:
        shutil.copyfile(DEMO_MODEL, os.path.join(directory, "tokenizer.model"))
        write_json(os.path.join(directory, "tokenizer_config.json"), demo_config(legacy=True))
        tokenizer = LlamaTokenizerFast.from_pretrained(directory, from_slow=True)
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def json_golden():
    write_json_variant_files()
    texts = synthetic_corpus()
    from_sentencepiece = sentencepiece_ids(texts)
    golden = {"transformers": transformers.__version__, "texts": "encode_golden.json texts", "variants": {}}
    for name, (loader, files) in json_variants().items():
        tokenizer = load_json_variant(name)
        assert type(tokenizer).__name__ == "LlamaTokenizerFast", type(tokenizer)
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        random_ids = random_id_sequences(len(tokenizer), 60, piece_count=512)
        differs = sum(1 for a, b in zip(ids, from_sentencepiece) if a != b)
        golden["variants"][name] = {
            "loader": loader,
            "files": files,
            "vocab_size": len(tokenizer),
            "bos_id": tokenizer.bos_token_id,
            "eos_id": tokenizer.eos_token_id,
            "pad_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            "added_special_ids": sorted(i for i, t in tokenizer.added_tokens_decoder.items() if t.special),
            "texts_where_tokenizer_model_differs": differs,
            "ids": ids,
            "random_ids": random_ids,
            "decoded": [tokenizer.decode(s) for s in ids + random_ids],
            "decoded_skip_special": [tokenizer.decode(s, skip_special_tokens=True) for s in ids + random_ids],
        }
        print(f"json/{name}: {len(texts)} texts, tokenizer.model alone differs on {differs}", file=sys.stderr)
    assert golden["variants"]["disagrees"]["texts_where_tokenizer_model_differs"] > 0
    assert golden["variants"]["rebuilt"]["ids"] != golden["variants"]["disagrees"]["ids"]
    # tokenizer.model with the published config ("add_prefix_space": null) and no tokenizer.json:
    # the converter prepends nothing, exactly as with the explicit false of "rebuilt"
    # (tests/test_tokenizer.cpp checks cst against the "rebuilt" ids for this directory).
    null_prefix = load_json_files("AutoTokenizer", {"tokenizer.model": "tokenizer.model",
                                                    "tokenizer_config.json": "legacy/tokenizer_config.json"})
    assert [null_prefix(t, add_special_tokens=False)["input_ids"] for t in texts] == golden["variants"]["rebuilt"]["ids"]
    with open(os.path.join(JSON_OUT, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, separators=(",", ":"))

# --- Chat templates. -------------------------------------------------------------------------------


TRIPLES = [
    ("You are a helpful assistant.", "Hello, who are you?", "I am a model."),
    ("You are a helpful assistant that is completely uncensored.", "Write a poem\nabout the sea.",
     "The sea is wide,\nthe sea is deep.\n\nThe end."),
    ("", "No system prompt here.", "Fine."),
    ("  padded system  ", "  padded user\n", "  padded answer  \n"),
    ("Système: réponds en français 🇫🇷", "日本語で答えて", "はい、わかりました。"),
    ("multi\nline\nsystem", "<s> literal tags </s> [INST] inside", "answer with <|im_end|> inside"),
]


def render(tokenizer, template, messages, generation, **template_variables):
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=generation, **template_variables)


def fold_system(system, user):
    # The seed's rule for templates without a system role (and cst's "plain" template).
    return system + "\n\n" + user if system else user


def plain_conversation(system, turns):
    # cst's "plain" template: the system prompt (when not empty) and every turn, joined by "\n\n".
    return "\n\n".join(([system] if system else []) + [turn["content"] for turn in turns])


def turn_messages(turns):
    return [{"role": role, "content": content} for role, content in turns]


def prompt_messages(name, system, turns):
    """[system] + turns, or for mistral (no system role) the system prompt folded into the first
    user turn."""
    if name == "mistral":
        first = dict(turns[0], content=fold_system(system, turns[0]["content"]))
        return [first] + turns[1:]
    return [{"role": "system", "content": system}] + turns


def render_conversation(tokenizer, name, system, turns, answer):
    """The prompt of [system] + turns (ending with a user turn), its generation prompt, and the
    text an assistant turn `answer` adds after it."""
    if name == "plain":
        prompt = plain_conversation(system, turns)
        return {"prompt": prompt, "generation_prompt": prompt, "answer": answer}
    template = CHAT_TEMPLATES[name]
    messages = prompt_messages(name, system, turns)
    prompt = render(tokenizer, template, messages, False)
    assistant = [{"role": "assistant", "content": answer}]
    if name == "mistral_v3":
        # The system message is written into the last user turn only, so once an assistant turn
        # follows, the template leaves it out: the answer is what the assistant turn adds after the
        # turns alone.
        turns_alone = render(tokenizer, template, turns, False)
        full = render(tokenizer, template, turns + assistant, False)
        assert full.startswith(turns_alone), (name, turns_alone, full)
        answer_turn = full[len(turns_alone):]
    else:
        # cst's invariant: prompt(system, turns) + answer(text) is the whole conversation.
        full = render(tokenizer, template, messages + assistant, False)
        assert full.startswith(prompt), (name, prompt, full)
        answer_turn = full[len(prompt):]
    if name in ("chatml", "solar", "zephyr"):  # these render a lone assistant turn too: it must agree
        alone = render(tokenizer, template, assistant, False)
        assert alone == answer_turn, (name, alone, answer_turn)
    if name == "llama3":  # a lone assistant turn too, with BOS before it as before any first turn
        alone = render(tokenizer, template, assistant, False)
        assert alone == tokenizer.bos_token + answer_turn, (name, alone, answer_turn)
    return {"prompt": prompt, "generation_prompt": render(tokenizer, template, messages, True),
            "answer": answer_turn}


def render_triple(tokenizer, name, system, user, answer):
    return render_conversation(tokenizer, name, system, [{"role": "user", "content": user}], answer)


# Conversations of several user turns (system, [(role, content), ...], answer): cst renders an
# answer the same after any prompt (answer(text) knows no context), so each must also equal the
# answer rendered after its last user turn alone.
CONVERSATIONS = [
    ("You are a helpful assistant.",
     [("user", "Hi!"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke.")],
     "Why did the chicken cross the road?"),
    ("You are a helpful assistant that is completely uncensored.",
     [("user", "Write a poem\nabout the sea."), ("assistant", "The sea is wide,\nthe sea is deep."),
      ("user", "Now one about the sky."), ("assistant", "The sky is blue.\n\nThe end."),
      ("user", "And a title for both?")],
     "Sea and Sky"),
    ("", [("user", "No system prompt here."), ("assistant", "Fine."), ("user", "Still none.")], "Right."),
    ("Système: réponds en français 🇫🇷",
     [("user", "日本語で答えて"), ("assistant", "はい、わかりました。"), ("user", "Ça va ? 🙂"),
      ("assistant", "Très bien, merci ✨"), ("user", "안녕하세요")],
     "Bonjour !"),
    ("  padded system  ",
     [("user", "  padded first user\n"), ("assistant", "\t padded assistant  \n"),
      ("user", "\u3000padded second user  ")],
     "  padded answer  \n"),
    ("multi\nline\nsystem",
     [("user", "<s> literal tags </s> [INST] inside"), ("assistant", ""),
      ("user", "an empty answer came before [/INST]")],
     "answer with <|im_end|> inside"),
]


def chat_template_golden():
    directory = os.path.join(OUT, "chat_templates")
    os.makedirs(directory, exist_ok=True)
    for name, source in CHAT_TEMPLATES.items():
        with open(os.path.join(directory, name + ".jinja"), "w", encoding="utf-8") as f:
            f.write(source)
    # Templates other than ChatML and Llama 3 are rendered with the Llama/Mistral special tokens <s>
    # and </s>; Llama 3's with its own BOS and end-of-turn token.
    llama3_tokens = load_variant("chatml", bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    tokenizers = {"chatml": load_variant("chatml"), "llama3": llama3_tokens, "llama3.1": llama3_tokens}
    llama_tokens = load_variant("chatml", eos_token="</s>")
    golden = {"triples": [list(t) for t in TRIPLES], "rendered": {},
              "conversations": [{"system": system, "turns": [list(turn) for turn in turns], "answer": answer}
                                for system, turns, answer in CONVERSATIONS],
              "conversations_rendered": {}}
    for name in list(CHAT_TEMPLATES) + ["plain"]:
        tokenizer = tokenizers.get(name, llama_tokens)
        golden["rendered"][name] = [render_triple(tokenizer, name, *t) for t in TRIPLES]
        rendered = []
        for system, turns, answer in CONVERSATIONS:
            conversation = render_conversation(tokenizer, name, system, turn_messages(turns), answer)
            last_user_alone = render_triple(tokenizer, name, system, turns[-1][1], answer)
            assert conversation["answer"] == last_user_alone["answer"], (name, conversation, last_user_alone)
            rendered.append(conversation)
        golden["conversations_rendered"][name] = rendered
    golden["llama3.1_dated"] = llama31_family_golden(llama3_tokens, directory)
    write_json(os.path.join(OUT, "chat_templates.json"), golden)


def llama31_family_golden(tokenizer, directory):
    """Writes the other llama3.1 family sources next to the built-in ones after checking that they
    render every triple and conversation as "llama3.1" does; returns the triples' prompts rendered with
    another date_string (the template variable behind --chat_template_date)."""
    conversations = [(system, [{"role": "user", "content": user}], answer) for system, user, answer in TRIPLES]
    conversations += [(system, turn_messages(turns), answer) for system, turns, answer in CONVERSATIONS]
    for member, source in LLAMA31_FAMILY.items():
        with open(os.path.join(directory, member + ".jinja"), "w", encoding="utf-8") as f:
            f.write(source)
        for system, turns, answer in conversations:
            messages = [{"role": "system", "content": system}] + turns
            for generation in (False, True):
                expected = render(tokenizer, CHAT_TEMPLATES["llama3.1"], messages, generation)
                assert render(tokenizer, source, messages, generation) == expected, (member, messages)
    date = "03 Dec 2026"
    rendered = []
    for system, user, _ in TRIPLES:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        prompts = {"prompt": render(tokenizer, CHAT_TEMPLATES["llama3.1"], messages, False, date_string=date),
                   "generation_prompt": render(tokenizer, CHAT_TEMPLATES["llama3.1"], messages, True,
                                               date_string=date)}
        for source in LLAMA31_FAMILY.values():
            assert render(tokenizer, source, messages, False, date_string=date) == prompts["prompt"]
        rendered.append(prompts)
    return {"date": date, "rendered": rendered}


if __name__ == "__main__":
    if sys.argv[1:] == ["--chat_templates_only"]:
        chat_template_golden()
        sys.exit(0)
    write_variants()
    encode_golden()
    dataset_hashes()
    chat_template_golden()
    json_golden()
    import make_byte_level_tokenizer_fixtures  # here: it imports this module's corpus itself
    make_byte_level_tokenizer_fixtures.main()
